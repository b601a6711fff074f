"""Output folders (never overwrite what sonocad did not write) and crash-safe, resumable tables."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import png, tree_digest
from sonocad import __version__
from sonocad.cli import main
from sonocad.errors import InputError
from sonocad.io.atomic import write_text
from sonocad.io.outputs import LOCK, MARKER, claim_output_dir, output_of, read_marker
from sonocad.workflows.predict import predict
from sonocad.workflows.writer import OutputWriter


def _images(folder: Path, n: int) -> Path:
    for i in range(n):
        png(folder / f"img{i:02d}.png", seed=i)
    return folder


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        claim_output_dir(out, "predict")
        assert output_of(out) == "predict"
        # The marker names the command and what made the folder: version and command line.
        assert read_marker(out) == {"command": "predict", "sonocad_version": __version__,
                                    "command_line": sys.argv}


def test_a_marker_without_a_command_is_not_sonocads(tmp_path: Path) -> None:
    for text in ('{"sonocad_version": "0.1.0"}', "[]", "{"):
        (tmp_path / MARKER).write_text(text)
        assert read_marker(tmp_path) is None and output_of(tmp_path) is None


def test_a_folder_sonocad_did_not_write_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not empty and was not written by sonocad"):
            claim_output_dir(tmp_path, "predict", overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_output_needs_overwrite_which_removes_its_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output_dir(out, "predict")
    write_text(out / "masks" / "old.png", "old")
    write_text(out / "predictions.csv", "old")
    with pytest.raises(InputError, match="give --overwrite .* --resume"):
        claim_output_dir(out, "predict")
    with pytest.raises(InputError, match="output of `sonocad predict`, not of `evaluate`"):
        claim_output_dir(out, "evaluate", overwrite=True)
    claim_output_dir(out, "predict", overwrite=True)
    assert sorted(p.name for p in out.rglob("*")) == sorted([MARKER, ".sonocad-written", LOCK])


def test_overwrite_stops_at_a_file_someone_else_put_in_the_folder(tmp_path: Path) -> None:
    claim_output_dir(tmp_path / "out", "evaluate")
    write_text(tmp_path / "out" / "metrics.json", "{}")
    (tmp_path / "out" / "my_notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="did not write, such as .*my_notes.txt"):
        claim_output_dir(tmp_path / "out", "evaluate", overwrite=True)
    assert (tmp_path / "out" / "my_notes.txt").read_text() == "keep me"
    assert (tmp_path / "out" / "metrics.json").exists()


def test_an_output_folder_holding_or_inside_an_input_is_refused(tmp_path: Path) -> None:
    image = png(tmp_path / "d" / "images" / "a.png")
    with pytest.raises(InputError, match="holds the input"):
        claim_output_dir(tmp_path / "d", "predict", inputs=[image])
    with pytest.raises(InputError, match="lies inside the input folder"):
        claim_output_dir(tmp_path / "d" / "images" / "out", "predict",
                         inputs=[tmp_path / "d" / "images"])


def test_predict_never_replaces_a_users_ground_truth(tmp_path: Path, checkpoint: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The issue's case: `predict d/images --out d` replaced d/masks/a.png."""
    data = tmp_path / "d"
    png(data / "images" / "a.png")
    png(data / "masks" / "a.png", seed=9)
    before = tree_digest(data)
    for out in (data, data / "images"):
        code = main(["predict", str(checkpoint), str(data / "images"), "--out", str(out)])
        assert code == 2
        assert tree_digest(data) == before
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("sonocad: error: ") for line in lines)


def test_predict_twice_needs_overwrite_and_then_leaves_no_stale_outputs(
        tmp_path: Path, checkpoint: Path) -> None:
    images = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    predict([images], out, checkpoint=checkpoint)
    (images / "img02.png").unlink()
    with pytest.raises(InputError, match="earlier `sonocad predict` output"):
        predict([images], out, checkpoint=checkpoint)
    predict([images], out, checkpoint=checkpoint, overwrite=True)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img00.png", "img01.png"]
    assert [row["image_id"] for row in _table(out)] == ["img00.png", "img01.png"]


def test_an_interrupted_predict_leaves_a_valid_table_and_resume_completes_it(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(tmp_path / "in", 6)
    straight = predict([images], tmp_path / "straight", checkpoint=checkpoint, batch_size=4)

    out = tmp_path / "out"
    submit, submitted = OutputWriter.submit, []

    def crash_at_the_fifth(self, *args, **kwargs):
        if len(submitted) == 4:
            raise KeyboardInterrupt
        submitted.append(submit(self, *args, **kwargs))

    monkeypatch.setattr(OutputWriter, "submit", crash_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        predict([images], out, checkpoint=checkpoint, batch_size=4)
    monkeypatch.undo()
    # Rows reach the table only once their files are written: a prefix, every file there.
    partial = _table(out) if (out / "predictions.csv").exists() else []
    assert partial == _table(tmp_path / "straight")[:len(partial)] and len(partial) <= 4
    for row in partial:
        assert (out / "masks" / f"{row['output_name']}.png").is_file()

    stale = out / "masks" / ".img04.png.x1y2.tmp"  # what a SIGKILL inside atomic_open leaves
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    if partial:
        with open(out / "predictions.csv", "a") as handle:  # and a row torn in the middle
            handle.write("img04.png,,,,,0,")
    resumed = predict([images], out, checkpoint=checkpoint, batch_size=4, resume=True)
    assert not stale.exists()
    assert [row["image_id"] for row in resumed.rows] == [r["image_id"] for r in straight.rows]
    assert _table(out) == _table(tmp_path / "straight")
    assert tree_digest(out / "masks") == tree_digest(tmp_path / "straight" / "masks")


def test_a_sigkilled_predict_resumes_to_the_same_table(tmp_path: Path, checkpoint: Path) -> None:
    images = _images(tmp_path / "in", 40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sonocad.cli", "predict", str(checkpoint), str(images),
               "--out", str(out), "--batch-size", "1"]
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if (out / "predictions.csv").exists() and len(_table(out)) >= 3:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "predict finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    partial = _table(out)
    assert 3 <= len(partial) < 40

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = _table(out)
    assert [row["image_id"] for row in rows] == [f"img{i:02d}.png" for i in range(40)]
    assert rows[:len(partial)] == partial
    assert len(list((out / "masks").iterdir())) == 40


@pytest.mark.timeout(120)
def test_a_long_multi_frame_input_passes_the_writers_back_pressure(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More frames of one input than the writer lets wait: it must not wait for ever on
    frames whose rows cannot reach the table before the input's last frame."""
    from PIL import Image as PILImage

    from sonocad.data.phantom import make_phantom
    from sonocad.workflows import writer

    monkeypatch.setattr(writer, "_MAX_PENDING", 2)
    pages = [PILImage.fromarray(make_phantom("benign", size=(40, 56), seed=i).image)
             for i in range(7)]
    loop = tmp_path / "in" / "loop.tif"
    loop.parent.mkdir()
    pages[0].save(loop, save_all=True, append_images=pages[1:])
    result = predict([loop], tmp_path / "out", checkpoint=checkpoint, batch_size=1)
    assert [row["frame"] for row in result.rows] == list(range(1, 8))
    assert [row["frame"] for row in _table(tmp_path / "out")] == [str(i) for i in range(1, 8)]
