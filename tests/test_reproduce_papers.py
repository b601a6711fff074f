"""benchmarks/reproduce_papers.py at smoke scale: every paper's recipe trains a step on the
frozen BUSI split, is scored on its test subset and lands in the table beside the paper; asked
for CUDA on a machine without it, the GPU settings run on the CPU."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce_papers.py"
# (the script's row key, the start of its model name in the table)
ROWS = (("u2net", "U2-Net"), ("u2netlite", "U2-Net-lite"), ("deepcardinal50", "DeepCardinal-50"),
        ("resnet34", "ResNet-34, random init"), ("resnet34_imagenet", "ResNet-34, ImageNet"),
        ("resnet50", "ResNet-50"), ("alexnet", "AlexNet"), ("fcn101", "FCN-ResNet101"),
        ("deeplabv3", "DeepLabV3-ResNet101"), ("maskrcnn", "Mask R-CNN"))


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


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder for every row, as one run of the script would fill it."""
    return tmp_path_factory.mktemp("reproduce")


@pytest.mark.busi
# The GPU settings ask for 4 loader workers; on a 2-core CPU torch says so, as it should.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("key, name", ROWS, ids=[key for key, _ in ROWS])
def test_a_paper_row_trains_evaluates_and_is_tabled(key, name, busi_root, reproduced,
                                                    monkeypatch, capsys):
    """One row per test (each a few seconds), so none nears the time limit on a busy machine."""
    # The CUDA paths' CPU fallback, always, GPU or not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stdout, stderr = _run_script(["--out", str(reproduced), "--scale", "smoke", "--device",
                                  "cuda", "--data", str(busi_root), "--only", key],
                                 monkeypatch, capsys)
    assert "no CUDA device here" in stderr
    (row,) = [line for line in stdout.splitlines() if "smoke" in line
              and re.search(re.escape(f"| {name}") + r"(?![\w-])", line)]
    assert "1 step" in row
    if key == "u2netlite":
        assert "| IoU 0.7063, precision 0.7512" in row
        result = json.loads((reproduced / key / "result.json").read_text())
        assert result["device"] == "cpu" and "train.channels_last=true" in result["overrides"]
        assert set(result["metrics"]) == {"lesion.dice", "lesion.iou", "lesion.precision",
                                          "lesion.recall", "all.pixel_accuracy"}
    if key == "maskrcnn":
        assert "SYNTHETIC" in stdout and "QIMS 2023 Table 2 layout" in stdout
    # The table is rebuilt from the result files alone.
    again, _ = _run_script(["--out", str(reproduced), "--table"], monkeypatch, capsys)
    assert row in again
