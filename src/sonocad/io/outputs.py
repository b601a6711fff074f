"""Output folders and files: sonocad writes only where it was told, into folders it owns, never
through a link, and never over a file it did not write.

`claim_output_dir` is the one gate every command that writes a folder (`predict`, `evaluate`,
`explain`, `register`, `train`, `data phantom`, `combine`) goes through:

* a new or empty folder becomes a sonocad output folder (a ``.sonocad-output.json`` marker
  names the command, and records the sonocad version and the command line; a command that
  runs a model adds what `sonocad.provenance` records of it);
* a folder an earlier run of the same command wrote is refused, unless ``overwrite`` (its files
  are removed first, stale ones included, so nothing of the earlier run is left beside the new
  one) or ``resume`` (kept, to be continued);
* any other non-empty folder is refused, and so is a folder that overlaps an input (holds one,
  or lies inside one), or one that holds a symbolic link: a link swapped in for ``masks/``
  would have every mask written through it, over the user's images;
* a claimed folder is locked (``.sonocad-lock``, an advisory lock the kernel drops when the
  process ends) until the command ends: a second command on the same folder is refused at once.

`claim_output_file` is the gate of commands that write one file (`data split`, `data check
--json`, `compare --out`, `report`, `export`): never an input, never over a file inside an
input folder.

`output_stem` makes the names sonocad derives from image ids safe (no root, no ``..``, bounded
length), so they stay inside ``--out``; and while a command holds a folder, `check_write`
(called by `sonocad.io.atomic` before every write) refuses a path in it that resolves outside
it, as one through a link swapped in after the claim would.
Every file written inside a claimed folder is logged in ``.sonocad-written`` before it appears,
so ``overwrite`` deletes only what sonocad wrote: a file someone put in the folder afterwards
stops the overwrite, named, rather than being deleted. Temporary files a killed run left behind
are removed when the folder is claimed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sonocad import __version__
from sonocad.errors import InputError, SonocadError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other rules still hold
    fcntl = None  # type: ignore[assignment]

MARKER = ".sonocad-output.json"
PROVENANCE = "provenance.json"  # what made a folder's results (`sonocad.provenance`)
WRITTEN_LOG = ".sonocad-written"
LOCK = ".sonocad-lock"
_OWN_FILES = frozenset({MARKER, WRITTEN_LOG, LOCK})
# A name part made from an id stays below this many UTF-8 bytes: with a frame number, a `_2`,
# a suffix such as `_class_heatmap.png` and the temporary name's dot, it fits the 255 bytes
# file systems allow.
MAX_NAME_BYTES = 200
_HASH_CHARACTERS = 8

# Folders claimed in this process: resolved path -> (lock descriptor, the path as given).
_claimed: dict[Path, tuple[int | None, Path]] = {}


def claim_output_dir(out: str | Path, command: str, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False, resume: bool = False) -> Path:
    """Make `out` a folder `command` may write into, or raise an `InputError` saying why not."""
    out = Path(out)
    plan = _plan(out, command, inputs, overwrite, resume)
    out.mkdir(parents=True, exist_ok=True)
    _lock(out)
    if plan == "resume":
        _remove_stale_temporaries(out)
        return out
    if plan == "overwrite":
        _remove_earlier_output(out)
    _mark(out, command)
    return out


def check_output_dir(out: str | Path, command: str, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False, resume: bool = False) -> None:
    """The `InputError` `claim_output_dir` would raise, if any, and nothing written: a command
    that reads for long before it writes (train loads its data) asks first."""
    _plan(Path(out), command, inputs, overwrite, resume)


def claim_output_file(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """`path` if this command may write it, else an `InputError`: never one of `inputs`,
    never a file that exists inside an input folder, never a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name to write")
    target = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == target:
            raise InputError(path, f"is the input {given}: writing there would replace it; "
                                   "choose another file name")
        if source.is_dir() and source in target.parents and path.exists():
            raise InputError(path, f"is a file of the input folder {given}: writing there "
                                   "would replace it; choose another file name")
    return path


def release_claims() -> None:
    """End this process's claims (a command has finished): locks dropped, writes unchecked."""
    for fd, _ in _claimed.values():
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its lock
    _claimed.clear()


def check_write(path: Path) -> None:
    """Refuse `path` when it lies in a folder claimed in this process but resolves outside
    it: a link swapped into the folder after the claim would have the write land elsewhere."""
    lexical = Path(os.path.abspath(path))
    owners = [folder for folder, (_, given) in _claimed.items()
              if lexical.is_relative_to(given) or lexical.is_relative_to(folder)]
    if not owners:
        return  # not an output folder's file: a caller's own
    target = path.parent.resolve() / path.name
    if not any(target.is_relative_to(folder) for folder in owners):
        raise SonocadError(f"{path}: refusing to write outside the output folder (a symbolic "
                           "link inside it leads elsewhere)")


def record_write(path: Path) -> None:
    """Log `path` as written by sonocad when it lies in a claimed folder (called by atomic_open
    before the file appears, so the log always covers every file we made)."""
    if not _claimed:
        return
    resolved = path.parent.resolve() / path.name
    owners = [folder for folder in _claimed if folder in resolved.parents]
    if owners:  # the nearest: a run's eval/ logs its own files
        folder = max(owners, key=lambda owner: len(owner.parts))
        with open(folder / WRITTEN_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(resolved.relative_to(folder).as_posix()) + "\n")


def output_stem(image_id: str) -> str:
    """A relative output name (no suffix) for `image_id`: its own folders kept, but no root,
    drive, ``.`` or ``..`` (an absolute or climbing id from a manifest lands inside the output
    folder), each part at most `MAX_NAME_BYTES` (a longer one is cut and given a stable hash)."""
    path = PurePosixPath(image_id.replace("\\", "/"))
    parts = [part for part in path.with_suffix("").parts if part not in ("/", ".", "..")
             and not part.endswith(":")]  # a Windows drive, "C:"
    return "/".join(_bounded(part) for part in parts) or "image"


def _bounded(part: str) -> str:
    data = part.encode("utf-8")
    if len(data) <= MAX_NAME_BYTES:
        return part
    digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARACTERS]
    cut = data[:MAX_NAME_BYTES - _HASH_CHARACTERS - 1].decode("utf-8", errors="ignore")
    return f"{cut}_{digest}"


@dataclass
class UniqueNames:
    """Output names unique in a run, case-insensitively (macOS and Windows file systems): a
    name already taken gets ``_2``, ``_3``, ..."""

    taken: set[str] = field(default_factory=set)

    def claim(self, base: str) -> str:
        name = base
        for n in itertools.count(2):
            if name.casefold() not in self.taken:
                break
            name = f"{base}_{n}"
        self.taken.add(name.casefold())
        return name


def is_temporary(path: Path) -> bool:
    """A temporary file of `sonocad.io.atomic` (``.sonocad-<random>.tmp``, or an earlier
    version's ``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def output_of(out: str | Path) -> str | None:
    """The command whose output folder `out` is, or None when sonocad did not make it."""
    marker = read_marker(out)
    return None if marker is None else str(marker["command"])


def read_marker(out: str | Path) -> dict[str, Any] | None:
    """The marker of output folder `out` (its ``command`` and what made it), or None when
    sonocad did not make it."""
    try:
        marker = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "command" in marker else None


def made_by() -> dict[str, Any]:
    """What every output folder records of the process that made it (its marker, and
    provenance.json): the sonocad version and the command line."""
    return {"sonocad_version": __version__, "command_line": list(sys.argv)}


def _plan(out: Path, command: str, inputs: Iterable[str | Path], overwrite: bool,
          resume: bool) -> str:
    """"create", "resume" or "overwrite" `out`; an InputError where none is allowed."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "the output path exists and is not a folder")
    _refuse_overlap(out, inputs)
    if _is_empty_or_missing(out):
        if resume:
            raise InputError(out, f"nothing to resume: no earlier {command} output here")
        return "create"
    earlier = output_of(out)
    if earlier is None:
        raise InputError(out, "the output folder is not empty and was not written by sonocad; "
                              "choose a new or empty folder")
    if earlier != command:
        raise InputError(out, f"holds the output of `sonocad {earlier}`, not of `{command}`; "
                              "choose another folder")
    if not resume and not overwrite:
        raise InputError(out, f"holds an earlier `sonocad {command}` output; give --overwrite to "
                              "replace it, --resume to continue it, or another --out")
    _refuse_links(out)
    if resume:
        return "resume"
    foreign = _foreign_files(out)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(out, f"holds files sonocad did not write, such as {foreign[0]}{more}; "
                              "move them out before --overwrite")
    return "overwrite"


def _refuse_overlap(out: Path, inputs: Iterable[str | Path]) -> None:
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == target or target in source.parents:
            raise InputError(out, f"the output folder holds the input {given}: writing there "
                                  "could replace it; choose a folder outside the inputs")
        if source.is_dir() and source in target.parents:
            raise InputError(out, f"the output folder lies inside the input folder {given}; "
                                  "choose a folder outside the inputs")


def _refuse_links(out: Path) -> None:
    """An earlier output must hold no symbolic link: sonocad never makes one, and writing or
    deleting through one would reach files outside the folder."""
    for folder, subfolders, files in os.walk(out):  # os.walk does not descend into links
        for name in [*subfolders, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                raise InputError(path, "is a symbolic link inside the output folder: sonocad "
                                       "never writes through links; remove it or choose "
                                       "another --out")


def _lock(out: Path) -> None:
    """Hold `out`'s lock until the command ends (`release_claims`); refuse a folder that
    another process holds."""
    key = out.resolve()
    if key in _claimed:  # claimed again in this process: its lock is already held
        return
    fd = None
    if fcntl is not None:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(out, "is in use by another sonocad command; wait for it to end, "
                                  "or choose another --out") from None
    _claimed[key] = (fd, Path(os.path.abspath(out)))


def _is_empty_or_missing(out: Path) -> bool:
    """Nothing in `out` but, at most, a lock a claim left before it could mark the folder."""
    return not out.exists() or all(path.name == LOCK for path in out.iterdir())


def _mark(out: Path, command: str) -> None:
    marker = {"command": command, **made_by()}
    (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    (out / WRITTEN_LOG).write_text("", encoding="utf-8")


def _written_files(out: Path) -> set[Path]:
    try:
        lines = (out / WRITTEN_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    return {out / json.loads(line) for line in lines if line}


def _foreign_files(out: Path) -> list[Path]:
    """Files in `out` that sonocad did not write, output folders nested in it included (a
    run's eval/, say)."""
    folders = [marker.parent for marker in out.rglob(MARKER)]
    written = set().union(*(_written_files(folder) for folder in folders))
    written |= {folder / name for folder in folders for name in _OWN_FILES}
    return [path for path in out.rglob("*") if not path.is_dir()
            and path not in written and not is_temporary(path)]


def _remove_earlier_output(out: Path) -> None:
    """Remove what sonocad wrote in `out` (`_plan` has made sure that is all it holds, and no
    link); the lock this command holds stays."""
    for path in [path for path in out.rglob("*") if not path.is_dir()]:
        if path != out / LOCK:
            path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # only folders left empty go
            folder.rmdir()


def _remove_stale_temporaries(out: Path) -> None:
    for path in out.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            os.unlink(path)
