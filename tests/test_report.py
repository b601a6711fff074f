"""`sonocad report` on real tiny runs: one self-contained HTML file with every section and the
evaluations' numbers, one-line errors for what is missing, and a headless-Chromium rendering.

The rendering (``report.png`` in the temporary folder, path printed with ``-s``) is there for a
person to look at. Chromium is Debian's ``/usr/bin/chromium`` (``SONOCAD_CHROMIUM`` points
elsewhere); the test skips, saying so, where it is absent.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import CLS_CLASSES, TINY_MULTITASK_RECIPE, write_checkpoint
from sonocad.checkpoint import load_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.split import make_split, write_split
from sonocad.models import create_model
from sonocad.report import build_report, card
from sonocad.report.card import model_card
from sonocad.report.markdown import render_markdown
from sonocad.report.sources import load_run
from sonocad.workflows.evaluate import evaluate

CHROMIUM = Path(os.environ.get("SONOCAD_CHROMIUM", "/usr/bin/chromium"))
CARD = """\
# Phantom model

Trained on **synthetic** phantoms; see [the paper](https://example.org/paper) and `sonocad`.

| metric | value |
| --- | ---: |
| Dice | 0.5 |

- research use only
- not a medical device
"""


class Runs(NamedTuple):
    data: Path
    split: Path
    a: Path  # a multitask run: segmentation and classification outputs
    b: Path  # the same run copied, with its own MODEL_CARD.md
    comparison: Path  # `sonocad compare a/eval b/eval --out`
    report: Path  # the report of both, with heatmaps and the comparison


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("report")
    data, split, recipe = root / "data", root / "split.json", root / "tiny.yaml"
    write_phantom_dataset(data, per_class=4, size=(64, 64), seed=5)
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.25, 0.25), seed=0))
    recipe.write_text(TINY_MULTITASK_RECIPE)
    a, b = root / "a", root / "b"
    assert main(["train", str(recipe), "--data", str(data), "--split", str(split), "--out",
                 str(a), "train.epochs=2", "train.max_steps=4"]) == 0
    # The library call, for its n_boot: 2000 bootstrap resamples would dominate the run time.
    evaluate(a / "best.pt", data, f"{split}:test", a / "eval", overlays=3, n_boot=100)
    shutil.copytree(a, b)
    (b / "MODEL_CARD.md").write_text(CARD)
    comparison, report = root / "comparison.json", root / "report.html"
    assert main(["compare", str(a / "eval"), str(b / "eval"), "--out", str(comparison)]) == 0
    assert main(["report", str(a), str(b), "--data", str(data), "--examples", "2",
                 "--compare", str(comparison), "--out", str(report)]) == 0
    return Runs(data, split, a, b, comparison, report)


class _Elements(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.tags


def test_the_report_is_one_self_contained_file(runs):
    html = runs.report.read_text(encoding="utf-8")
    elements = _elements(html)
    images = [attrs["src"] for tag, attrs in elements if tag == "img"]
    # 2 runs x (curves, 3 overlays, 3 classification figures, 2 heatmap examples)
    assert len(images) == 2 * 9
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    links = [value for _, attrs in elements for key, value in attrs.items()
             if key in ("src", "href") and value]
    assert not [link for link in links if link.startswith(("http://", "https://", "//"))]
    assert all(link.startswith(("#", "data:")) for link in links)
    assert not {"script", "link", "iframe", "object"} & {tag for tag, _ in elements}


def test_every_section_is_there_with_the_evaluations_numbers(runs):
    html = runs.report.read_text(encoding="utf-8")
    ids = {attrs.get("id") for _, attrs in _elements(html)}
    assert {"summary", "comparison", "run-1", "run-2"} <= ids
    for heading in ("Summary", "Comparison", "Data", "Training", "Results: segmentation",
                    "Results: classification", "Where the model looked", "Model card",
                    "Worst, median and best cases", "Segmentation (JMIR 2026 Table 2 layout)",
                    "Classification (QIMS 2023 Table 2 layout)"):
        assert f">{heading}</h" in html, heading

    metrics = json.loads((runs.a / "eval" / "metrics.json").read_text())["parts"]
    dice = metrics["segmentation"]["groups"]["lesion"]["dice"]
    accuracy = metrics["classification"]["groups"]["all"]["accuracy"]
    for stat in (dice, accuracy):
        assert f"{stat['mean']:.3f}" in html
        assert f"{stat['ci_low']:.3f}–{stat['ci_high']:.3f}" in html
    confusion = metrics["segmentation"]["pooled_confusion"]
    assert f">{confusion['tn']:,}<" in html
    meta = load_checkpoint(runs.a / "best.pt").meta
    assert f">{meta['data']['n_train']} (subset train)<" in html
    assert "lesion probability (right" in html  # a multitask model's heatmap

    # Run b has its own card, rendered; run a gets one generated from its checkpoint.
    assert "<h4>Phantom model</h4>" in html and "<strong>synthetic</strong>" in html
    assert "generated from" in html and "efficientnet_lite0_unet" in html


def test_without_data_the_heatmaps_give_way_to_a_note(runs, tmp_path):
    out = tmp_path / "single.html"
    assert main(["report", str(runs.a), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    elements = _elements(html)
    assert "pass --data DIR" in html
    assert not [attrs for tag, attrs in elements if attrs.get("alt") == "heatmap example"]
    ids = {attrs.get("id") for _, attrs in elements}
    assert "run-1" in ids and "summary" not in ids  # one run: no side-by-side table


def test_a_classifier_gets_grad_cam_examples_and_no_curves_without_a_log(runs, tmp_path):
    run = tmp_path / "classifier"  # an untrained ResNet34 with only best.pt: no training log
    write_checkpoint(run / "best.pt", "classification", "resnet34", {"num_classes": 3},
                     CLS_CLASSES, create_model("resnet34", num_classes=3).state_dict(),
                     input_size=64)
    evaluate(run / "best.pt", runs.data, f"{runs.split}:test", run / "eval", n_boot=20)
    out = build_report([run], tmp_path / "classifier.html", data=runs.data, examples=2)
    html = out.read_text(encoding="utf-8")
    assert "the Grad-CAM of its predicted class" in html and "predicted " in html
    assert "No metrics.csv in" in html and ">Results</h3>" in html
    assert "Results: segmentation" not in html


def test_what_is_missing_is_named_in_one_line(runs, tmp_path, capsys):
    unevaluated = tmp_path / "unevaluated"
    unevaluated.mkdir()
    shutil.copy(runs.a / "best.pt", unevaluated / "best.pt")
    cases = {
        "eval/metrics.json: no evaluation found": [str(unevaluated)],
        "no such run folder": [str(tmp_path / "absent")],
        "--eval given 1 time(s) for 2 run(s)": [str(runs.a), str(runs.b), "--eval",
                                                str(runs.a / "eval")],
        "not a `sonocad compare --out FILE.json` file": [
            str(runs.a), "--compare", str(runs.a / "eval" / "metrics.json")],
    }
    for expected, args in cases.items():
        assert main(["report", *args, "--out", str(tmp_path / "r.html")]) == 2
        error = capsys.readouterr().err
        assert expected in error and error.count("\n") == 1, error
    assert not (tmp_path / "r.html").exists()


def test_a_model_card_renders_as_html_and_never_links_out():
    html = render_markdown(CARD + "\n<script>alert(1)</script>\n")
    assert "<h4>Phantom model</h4>" in html
    assert "<ul><li>research use only</li>" in html
    assert '<td class="num">0.5</td>' in html and "<code>sonocad</code>" in html
    assert "the paper <span" in html and "href" not in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_run_name_or_metric_key_with_markup_comes_out_escaped(runs, tmp_path):
    run = tmp_path / "<script>run"
    shutil.copytree(runs.a, run)
    metrics_path = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["parts"]["classification"]["groups"]["all"]["<script>key"] = {
        "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    metrics_path.write_text(json.dumps(metrics))
    out = build_report([run, runs.b], tmp_path / "escaped.html")
    html = out.read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;run" in html and "&lt;script&gt;key" in html
    assert not {"script"} & {tag for tag, _ in _elements(html)}


def test_the_bundled_model_brings_its_own_card(runs, tmp_path, monkeypatch):
    package = tmp_path / "sonocad"  # stands in for the installed package's files
    (package / "weights").mkdir(parents=True)
    shutil.copy(runs.a / "best.pt", package / "weights" / "default.pt")
    (package / "weights" / "MODEL_CARD.md").write_text("# The default model\n\nBUSI.\n")
    monkeypatch.setattr(card, "files", lambda _: package)
    assert "<h4>The default model</h4>" in model_card(load_run(runs.a))[0]
    assert "Phantom model" in model_card(load_run(runs.b))[0]  # the run's own card comes first
    (package / "weights" / "default.pt").unlink()
    assert model_card(load_run(runs.a))[1].startswith("generated from")


@pytest.mark.slow
def test_chromium_renders_the_report(runs):
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set "
                    "SONOCAD_CHROMIUM)")
    png = runs.report.with_suffix(".png")
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--no-first-run", "--disable-background-networking",
                    f"--screenshot={png}", "--window-size=1280,4000", runs.report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"rendering: {png}")
    with PILImage.open(png) as image:
        assert image.size == (1280, 4000)
        pixels = np.asarray(image.convert("RGB"))
    grey = pixels.mean(axis=2)
    assert grey.std() > 25  # text, tables and figures, not an empty page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # figures rendered in colour
    assert (grey[:150] < 60).mean() > 0.5  # the dark masthead at the top
