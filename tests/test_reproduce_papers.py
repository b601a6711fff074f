"""benchmarks/reproduce_papers.py at smoke scale: every paper's recipe trains a step on the
frozen BUSI split, is scored on its test subset and lands in the table beside the paper; asked
for CUDA on a machine without it, the GPU settings run on the CPU."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce_papers.py"
ROWS = ("U2-Net", "U2-Net-lite", "DeepCardinal-50", "ResNet-34, random init",
        "ResNet-34, ImageNet", "ResNet-50", "AlexNet", "FCN-ResNet101", "DeepLabV3-ResNet101",
        "Mask R-CNN")


def _run_script(args: list[str], monkeypatch, capsys) -> tuple[str, str]:
    """The script's main() in this process (its imports are this process's: no second start-up
    of torch), as if run from benchmarks/ with `args`; (stdout, stderr)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.chdir(SCRIPT.parent)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    script = importlib.import_module(SCRIPT.stem)
    capsys.readouterr()
    script.main()
    return capsys.readouterr()


@pytest.mark.busi
# The GPU settings ask for 4 loader workers; on a 2-core CPU torch says so, as it should.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_every_paper_row_trains_evaluates_and_is_tabled(busi_root, tmp_path, monkeypatch,
                                                        capsys):
    # The CUDA paths' CPU fallback, always, GPU or not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stdout, stderr = _run_script(["--out", str(tmp_path), "--scale", "smoke", "--device",
                                  "cuda", "--data", str(busi_root)], monkeypatch, capsys)
    assert "no CUDA device here" in stderr
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "smoke" in line]
    assert len(rows) == len(ROWS)
    for name, line in zip(ROWS, rows):
        assert f"| {name}" in line and "1 step" in line
    assert "| IoU 0.7063, precision 0.7512" in rows[1]
    assert "SYNTHETIC" in stdout and "QIMS 2023 Table 2 layout" in stdout
    result = json.loads((tmp_path / "u2netlite" / "result.json").read_text())
    assert result["device"] == "cpu" and "train.channels_last=true" in result["overrides"]
    assert set(result["metrics"]) == {"lesion.dice", "lesion.iou", "lesion.precision",
                                      "lesion.recall", "all.pixel_accuracy"}
    # The table is rebuilt from the result files alone.
    again, _ = _run_script(["--out", str(tmp_path), "--table"], monkeypatch, capsys)
    assert rows[0] in again
