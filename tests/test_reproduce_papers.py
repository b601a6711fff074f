"""benchmarks/reproduce_papers.py at smoke scale: every paper's recipe trains a step on the
frozen BUSI split, is scored on its test subset and lands in the table beside the paper; asked
for CUDA on a machine without it, the GPU settings run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce_papers.py"
ROWS = ("U2-Net", "U2-Net-lite", "DeepCardinal-50", "ResNet-34, random init",
        "ResNet-34, ImageNet", "ResNet-50", "AlexNet", "FCN-ResNet101", "DeepLabV3-ResNet101",
        "Mask R-CNN")


@pytest.mark.busi
def test_every_paper_row_trains_evaluates_and_is_tabled(busi_root, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CUDA paths' CPU fallback, always
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--scale",
                           "smoke", "--device", "cuda", "--data", str(busi_root)],
                          capture_output=True, text=True, env=env, cwd=SCRIPT.parent,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no CUDA device here" in done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and
            "smoke" in line]
    assert len(rows) == len(ROWS)
    for name, line in zip(ROWS, rows):
        assert f"| {name}" in line and "1 step" in line
    assert "| IoU 0.7063, precision 0.7512" in rows[1]
    assert "SYNTHETIC" in done.stdout and "QIMS 2023 Table 2 layout" in done.stdout
    result = json.loads((tmp_path / "u2netlite" / "result.json").read_text())
    assert result["device"] == "cpu" and "train.channels_last=true" in result["overrides"]
    assert set(result["metrics"]) == {"lesion.dice", "lesion.iou", "lesion.precision",
                                      "lesion.recall", "all.pixel_accuracy"}
    # The table is rebuilt from the result files alone.
    again = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--table"],
                           capture_output=True, text=True, cwd=SCRIPT.parent, timeout=120)
    assert again.returncode == 0 and rows[0] in again.stdout
