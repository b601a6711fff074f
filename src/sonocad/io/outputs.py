"""Output folders: sonocad writes only into folders it owns, and never over a file it did not write.

`claim_output_dir` is the one gate every command that writes a folder (`predict`, `evaluate`,
`explain`, `register`, `train`) goes through:

* a new or empty folder becomes a sonocad output folder (a ``.sonocad-output.json`` marker
  names the command);
* a folder an earlier run of the same command wrote is refused, unless ``overwrite`` (its files
  are removed first, stale ones included, so nothing of the earlier run is left beside the new
  one) or ``resume`` (kept, to be continued);
* any other non-empty folder is refused, and so is a folder that overlaps an input (holds one,
  or lies inside one): writing there could replace a user's image or ground truth.

Every file written through `sonocad.io.atomic` inside a claimed folder is logged in
``.sonocad-written`` before it appears, so ``overwrite`` deletes only what sonocad wrote: a file
someone put in the folder afterwards stops the overwrite, named, rather than being deleted.
Temporary files a killed run left behind are removed when the folder is claimed again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from sonocad import __version__
from sonocad.errors import InputError

MARKER = ".sonocad-output.json"
WRITTEN_LOG = ".sonocad-written"
_OWN_FILES = frozenset({MARKER, WRITTEN_LOG})
_claimed: set[Path] = set()  # resolved folders claimed in this process


def claim_output_dir(out: str | Path, command: str, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False, resume: bool = False) -> Path:
    """Make `out` a folder `command` may write into, or raise an `InputError` saying why not."""
    out = Path(out)
    plan = _plan(out, command, inputs, overwrite, resume)
    if plan == "resume":
        _remove_stale_temporaries(out)
        _claimed.add(out.resolve())
        return out
    if plan == "overwrite":
        _remove_earlier_output(out)
    return _create(out, command)


def check_output_dir(out: str | Path, command: str, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False, resume: bool = False) -> None:
    """The `InputError` `claim_output_dir` would raise, if any, and nothing written: a command
    that reads for long before it writes (train loads its data) asks first."""
    _plan(Path(out), command, inputs, overwrite, resume)


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
    if resume:
        return "resume"
    if not overwrite:
        raise InputError(out, f"holds an earlier `sonocad {command}` output; give --overwrite to "
                              "replace it, --resume to continue it, or another --out")
    foreign = _foreign_files(out)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(out, f"holds files sonocad did not write, such as {foreign[0]}{more}; "
                              "move them out before --overwrite")
    return "overwrite"


def record_write(path: Path) -> None:
    """Log `path` as written by sonocad when it lies in a claimed folder (called by atomic_open
    before the file appears, so the log always covers every file we made)."""
    if not _claimed:
        return
    resolved = path.resolve()
    owners = [folder for folder in _claimed if folder in resolved.parents]
    if owners:  # the nearest: a run's eval/ logs its own files
        folder = max(owners, key=lambda owner: len(owner.parts))
        with open(folder / WRITTEN_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(resolved.relative_to(folder).as_posix()) + "\n")


def is_temporary(path: Path) -> bool:
    """A temporary file of `sonocad.io.atomic` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


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


def _is_empty_or_missing(out: Path) -> bool:
    return not out.exists() or next(out.iterdir(), None) is None


def output_of(out: str | Path) -> str | None:
    """The command whose output folder `out` is, or None when sonocad did not make it."""
    try:
        return str(json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _create(out: Path, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    marker = {"command": command, "sonocad_version": __version__}
    (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    (out / WRITTEN_LOG).write_text("", encoding="utf-8")
    _claimed.add(out.resolve())
    return out


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
    """Remove what sonocad wrote in `out` (`_plan` has made sure that is all it holds)."""
    for path in [path for path in out.rglob("*") if not path.is_dir()]:
        path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # only folders left empty go
            folder.rmdir()


def _remove_stale_temporaries(out: Path) -> None:
    for path in out.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            os.unlink(path)
