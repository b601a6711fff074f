"""The write rule, attacked (issue 28): every file a command writes resolves inside its --out or
is the one file it was told to write; never through a link, never over an input, never into a
folder another command holds. Each case checks the one line, the exit code and that every
input is byte for byte as it was."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import EXIT_FATAL, png, run_cli, tree_digest
from sonocad.data.phantom import write_phantom_dataset
from sonocad.errors import SonocadError
from sonocad.io.atomic import write_text
from sonocad.io.outputs import LOCK, claim_output_dir, output_stem
from sonocad.predictions import read_predictions

# --- names made from ids stay inside --out ---------------------------------------------------

def _absolute_cell(data: Path) -> str:
    return str((data / "x.png").resolve())


MANIFEST_IDS = {
    "absolute path in a manifest": _absolute_cell,
    "'..' in a manifest id": lambda data: "../data/x.png",
    "deep '..' in a manifest id": lambda data: "../" * 12 + str(
        (data / "x.png").resolve()).lstrip("/"),
    "'./' and doubled slashes in a manifest id": lambda data: ".//..//data/./x.png",
}


@pytest.mark.parametrize("kind", sorted(MANIFEST_IDS))
def test_a_manifest_id_never_names_a_file_outside_out(
        kind: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    png(data / "x.png")
    cell = MANIFEST_IDS[kind](data)
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"image,label\n{cell},benign\n")
    if not (manifest.parent / cell).resolve().is_file():  # relative cells are from the CSV
        pytest.fail(f"the case's cell {cell!r} does not name the image")
    before = tree_digest(tmp_path)
    out = tmp_path / "out"
    code, lines = run_cli(["predict", checkpoint, manifest, "--out", out], capsys)
    assert code == 0, lines
    after = tree_digest(tmp_path)
    assert all(after[name] == digest for name, digest in before.items())  # inputs untouched
    assert all(name.startswith("out/") for name in after.keys() - before.keys())
    (mask,) = (out / "masks").rglob("*.png")
    assert ".." not in mask.relative_to(out).parts


def test_a_glob_that_climbs_stays_inside_out(tmp_path: Path, checkpoint: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    png(tmp_path / "data" / "a" / "keep.png")
    png(tmp_path / "x" / "victim.png")
    before = tree_digest(tmp_path)
    out = tmp_path / "data" / "out"
    pattern = str(tmp_path / "data" / "*" / ".." / ".." / "x" / "*.png")
    code, lines = run_cli(["predict", checkpoint, pattern, "--out", tmp_path / "out"], capsys)
    assert code == 0, lines
    after = tree_digest(tmp_path)
    assert all(after[name] == digest for name, digest in before.items())
    assert not out.exists()
    assert [p.relative_to(tmp_path / "out").as_posix()
            for p in (tmp_path / "out" / "masks").rglob("*.png")] == ["masks/a/x/victim.png"]


@pytest.mark.parametrize("image_id, stem", [
    ("/abs/path/x.png", "abs/path/x"),
    ("../../etc/x.png", "etc/x"),
    ("C:\\scans\\x.png", "scans/x"),
    ("a/./b/../c.png", "a/b/c"),
    ("..", "image"),
    ("benign (10).png", "benign (10)"),
])
def test_output_stem_keeps_an_ids_own_folders_and_nothing_else(image_id: str,
                                                              stem: str) -> None:
    assert output_stem(image_id) == stem


def test_a_file_name_near_the_limit_is_predicted_with_a_bounded_stable_name(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    long_name = "s" * 245 + ".png"  # 249 bytes: legal; with a temporary suffix it was not
    image = png(tmp_path / "in" / long_name)
    code, lines = run_cli(["predict", checkpoint, image, "--out", tmp_path / "out"], capsys)
    assert code == 0, lines
    (mask,) = (tmp_path / "out" / "masks").iterdir()
    assert len(mask.name.encode()) <= 255 and mask.stem == output_stem(long_name)
    assert len(read_predictions(tmp_path / "out" / "predictions.csv")) == 1


def test_a_link_swapped_in_after_the_claim_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "inputs"
    victim.mkdir()
    (victim / "scan.png").write_bytes(b"the user's image")
    out = claim_output_dir(tmp_path / "out", "predict")
    (out / "masks").symlink_to(victim, target_is_directory=True)
    with pytest.raises(SonocadError, match="outside the output folder"):
        write_text(out / "masks" / "scan.png", "a mask")
    assert (victim / "scan.png").read_bytes() == b"the user's image"
    assert [p.name for p in victim.iterdir()] == ["scan.png"]  # no temporary left either


# --- links inside an earlier output ----------------------------------------------------------

def _earlier_output(tmp_path: Path, checkpoint: Path, capsys) -> tuple[Path, Path]:
    inputs = tmp_path / "in"
    for i in range(3):
        png(inputs / f"i{i}.png", seed=i)
    out = tmp_path / "out"
    assert run_cli(["predict", checkpoint, inputs, "--out", out], capsys)[0] == 0
    return inputs, out


def _link_masks_to_inputs(out: Path, inputs: Path) -> None:
    for mask in (out / "masks").iterdir():
        mask.unlink()
    (out / "masks").rmdir()
    (out / "masks").symlink_to(inputs, target_is_directory=True)


def _dangling_table(out: Path, inputs: Path) -> None:
    (out / "predictions.csv").unlink()
    (out / "predictions.csv").symlink_to(inputs.parent / "created-outside.csv")


def _linked_file(out: Path, inputs: Path) -> None:
    (out / "overlays" / "i0.png").unlink()
    (out / "overlays" / "i0.png").symlink_to(inputs / "i0.png")


LINK_CASES = {
    "masks/ linked to the inputs, --overwrite": (_link_masks_to_inputs, "--overwrite"),
    "masks/ linked to the inputs, --resume": (_link_masks_to_inputs, "--resume"),
    "dangling predictions.csv link, --resume": (_dangling_table, "--resume"),
    "dangling predictions.csv link, --overwrite": (_dangling_table, "--overwrite"),
    "an overlay linked to an input, --overwrite": (_linked_file, "--overwrite"),
}


@pytest.mark.parametrize("kind", sorted(LINK_CASES))
def test_an_output_folder_holding_a_link_is_refused(
        kind: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    plant, flag = LINK_CASES[kind]
    inputs, out = _earlier_output(tmp_path, checkpoint, capsys)
    plant(out, inputs)
    before = tree_digest(inputs)
    code, lines = run_cli(["predict", checkpoint, inputs, "--out", out, flag], capsys)
    assert code == EXIT_FATAL and len(lines) == 1, lines
    assert "symbolic link" in lines[0] and "sonocad: error: " in lines[0]
    assert tree_digest(inputs) == before
    assert not (tmp_path / "created-outside.csv").exists()


# --- one command per folder ------------------------------------------------------------------

def test_a_folder_another_command_holds_is_refused_at_once(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    inputs, out = _earlier_output(tmp_path, checkpoint, capsys)
    table = (out / "predictions.csv").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / LOCK)!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for flag in ("--resume", "--overwrite"):
            code, lines = run_cli(["predict", checkpoint, inputs, "--out", out, flag], capsys)
            assert code == EXIT_FATAL and len(lines) == 1 and "in use" in lines[0], lines
        assert (out / "predictions.csv").read_bytes() == table
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    code, lines = run_cli(["predict", checkpoint, inputs, "--out", out, "--resume"], capsys)
    assert code == 0 and time.monotonic() - started < 60  # the lock died with its holder
    assert len(read_predictions(out / "predictions.csv")) == 3


# --- commands that write one file or a dataset -----------------------------------------------

def _manifest_dataset(folder: Path) -> Path:
    for i in range(12):
        png(folder / f"i{i}.png", seed=i)
    manifest = folder / "m.csv"
    manifest.write_text("image,label,patient_id\n" + "".join(
        f"i{i}.png,{('benign', 'malignant')[i % 2]},p{i}\n" for i in range(12)))
    return manifest


def _busi_layout(folder: Path) -> Path:
    write_phantom_dataset(folder, per_class=2, size=(40, 56))
    return folder


OWN_INPUT_CASES = {
    "data split X.csv --out X.csv": lambda m: ["data", "split", m, "--out", m],
    "data split --out an image of the data set": lambda m: [
        "data", "split", m, "--out", m.parent / "i3.png"],
    "data check DIR --json DIR/image.png": lambda m: [
        "data", "check", _busi_layout(m.parent / "busi"), "--json",
        m.parent / "busi" / "benign" / "benign (1).png"],
    "data check X.csv --json an image it lists": lambda m: [
        "data", "check", m, "--json", m.parent / "i0.png"],
    "data check X.csv --json X.csv": lambda m: ["data", "check", m, "--json", m],
    "data phantom over an existing data set": lambda m: ["data", "phantom", m.parent],
    "compare A B --out A": lambda m: ["compare", m, m.parent / "i1.png", "--out", m],
}


@pytest.mark.parametrize("kind", sorted(OWN_INPUT_CASES))
def test_a_command_never_writes_over_its_own_input(kind: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest_dataset(tmp_path / "data")
    argv = OWN_INPUT_CASES[kind](manifest)
    before = tree_digest(tmp_path)
    code, lines = run_cli(argv, capsys)
    assert code == EXIT_FATAL and len(lines) == 1 and lines[0].startswith("sonocad: error: ")
    assert re.search("input|not empty", lines[0]), lines
    assert tree_digest(tmp_path) == before


def test_data_phantom_into_its_own_earlier_output_needs_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "phantoms"
    assert run_cli(["data", "phantom", out, "--per-class", "1"], capsys)[0] == 0
    before = tree_digest(out)
    code, lines = run_cli(["data", "phantom", out, "--per-class", "1", "--seed", "3"], capsys)
    assert code == EXIT_FATAL and "--overwrite" in lines[0] and tree_digest(out) == before
    code, _ = run_cli(["data", "phantom", out, "--per-class", "1", "--seed", "3", "--overwrite"],
                   capsys)
    assert code == 0 and tree_digest(out) != before


# --- what lands in the table -----------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"])
def test_ids_that_look_like_formulas_are_escaped_in_the_csv_and_read_back(
        prefix: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    name = f"{prefix}cmd(1).png"
    png(tmp_path / "in" / name)
    code, _ = run_cli(["predict", checkpoint, tmp_path / "in", "--out", tmp_path / "out"], capsys)
    assert code == 0
    with open(tmp_path / "out" / "predictions.csv", newline="", encoding="utf-8") as handle:
        (row,) = csv.DictReader(handle)
    assert row["image_id"] == f"'{name}" and not row["output_name"].startswith(prefix)
    assert read_predictions(tmp_path / "out" / "predictions.csv")[0]["image_id"] == name


def _strict_json(path: Path) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("spacing", ["1e200", "1e300,1e-300"])
def test_an_absurd_spacing_never_writes_infinity_into_json(
        spacing: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    image = png(tmp_path / "in" / "a.png")
    code, _ = run_cli(["predict", checkpoint, image, "--out", tmp_path / "out", "--spacing",
                    spacing], capsys)
    assert code == 0
    (row,) = _strict_json(tmp_path / "out" / "predictions.json")  # the model outlines it all
    assert (row["lesion_area_mm2"] is None) == (spacing == "1e200")


# --- the machine's failures and the libraries' warnings ---------------------------------------

@pytest.mark.parametrize("code_, said, hint", [
    (errno.ENOSPC, "No space left on device", "disk is full"),
    (errno.EROFS, "Read-only file system", "read-only"),
    (errno.EACCES, "Permission denied", "no permission"),
    (errno.EDQUOT, "Disk quota exceeded", "quota"),
])
def test_a_full_or_read_only_disk_is_named_as_such(
        code_: int, said: str, hint: str, tmp_path: Path, checkpoint: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonocad.io import atomic

    def fails(fd: int) -> None:
        raise OSError(code_, said, str(tmp_path / "out" / "masks" / "a.png"))

    monkeypatch.setattr(atomic.os, "fsync", fails)
    image = png(tmp_path / "in" / "a.png")
    before = tree_digest(tmp_path / "in")
    code, lines = run_cli(["predict", checkpoint, image, "--out", tmp_path / "out"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1, lines
    assert said in lines[0] and hint in lines[0] and "a.png" in lines[0]
    assert tree_digest(tmp_path / "in") == before


def test_a_library_warning_is_one_line_once(tmp_path: Path, checkpoint: Path,
                                            capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from sonocad.workflows import predict as predict_module

    real = predict_module.numbered_frames

    def warns(path: Path):
        warnings.warn("Possibly corrupt EXIF data.\n  Expecting to read 12 bytes",
                      UserWarning, stacklevel=1)
        return real(path)

    monkeypatch.setattr(predict_module, "numbered_frames", warns)
    for i in range(3):
        png(tmp_path / "in" / f"{i}.png", seed=i)
    code, lines = run_cli(["predict", checkpoint, tmp_path / "in", "--out", tmp_path / "out"],
                       capsys)
    assert code == 0
    assert lines == ["sonocad: warning: Possibly corrupt EXIF data. Expecting to read 12 bytes"]


def test_a_real_pillow_exif_warning_is_one_line(tmp_path: Path, checkpoint: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """A JPEG whose EXIF block is cut short: Pillow warns while it applies the orientation."""
    from PIL import Image as PILImage

    path = tmp_path / "in" / "cut_exif.jpg"
    path.parent.mkdir()
    PILImage.fromarray(np.full((40, 40), 90, np.uint8)).save(path, exif=_exif_cut_short())
    code, lines = run_cli(["predict", checkpoint, path, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert len(lines) == 1 and re.match("sonocad: warning: .*tag", lines[0], re.I), lines


def _exif_cut_short() -> bytes:
    """An EXIF block whose one entry points past the block's end."""
    import struct

    entry = struct.pack("<HHII", 0x010F, 2, 64, 2000)  # Make: 64 ASCII bytes at offset 2000
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + (
        b"\x00" * 4)


@pytest.mark.busi
def test_a_manifest_of_absolute_busi_paths_leaves_the_real_images_alone(
        busi_root: Path, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    """The red team's first case on real files: absolute paths of BUSI images in a CSV."""
    images = [busi_root / "benign" / "benign (10).png", busi_root / "malignant" /
              "malignant (10).png"]
    before = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in images}
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n" + "".join(f"{path},benign\n" for path in images))
    out = tmp_path / "out"
    code, lines = run_cli(["predict", checkpoint, manifest, "--out", out], capsys)
    assert code == 0, lines
    assert {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in images} == before
    masks = sorted(p.relative_to(out).as_posix() for p in (out / "masks").rglob("*.png"))
    assert len(masks) == 2 and all(out / m != Path(m) for m in masks)
    assert all("benign (10)" in m or "malignant (10)" in m for m in masks)
