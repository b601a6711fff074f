"""`sonocad report` on real tiny runs, the bundled model's evaluation and a cross-validation:
one self-contained HTML file with every section and the evaluations' numbers, one-line errors
for what is missing, and a print layout in which every table column shows.

The bundled model is evaluated on three real BUSI images where BUSI is here, else on phantoms.
The print check lays the reports out in headless Chromium as an A4 page would (print media, the
printable width) and prints them to PDF (``*.pdf`` beside the reports in the temporary folder,
paths printed with ``-s``, for a person to look at). It needs Debian's ``chromium`` and
``chromium-driver`` and the ``selenium`` package, and skips, saying so, where any is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import (
    BUSI_ROOT,
    CLS_CLASSES,
    TINY_MULTITASK_RECIPE,
    TINY_UNET_RECIPE,
    phantom_dataset,
    write_checkpoint,
)
from sonocad.checkpoint import load_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.split import SplitFile, make_folds, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.models import create_model
from sonocad.predictions import read_predictions
from sonocad.report import build_report, card
from sonocad.report.card import model_card
from sonocad.report.markdown import render_markdown
from sonocad.report.sources import load_run
from sonocad.workflows.cross_validation import cross_validate
from sonocad.workflows.evaluate import evaluate

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PRINTABLE_PX = round((210 - 2 * 12) / 25.4 * 96)  # A4 less report.css's @page margins, CSS px
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


class Bundled(NamedTuple):
    data: Path  # the data set it read
    evaluation: Path  # `sonocad evaluate default --out`
    real: bool  # BUSI images, not phantoms


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("report")
    data, split = phantom_dataset(root, per_class=4, size=(64, 64), seed=5)
    recipe = root / "tiny.yaml"
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


@pytest.fixture(scope="module")
def bundled(runs, tmp_path_factory) -> Bundled:
    """`sonocad evaluate default` on one image of each class: BUSI's where it is here."""
    root = tmp_path_factory.mktemp("bundled")
    real = (BUSI_ROOT / "benign").is_dir()
    data = BUSI_ROOT if real else runs.data
    samples = open_dataset(data)
    ids = sorted(next(s.image_id for s in samples if s.label == label) for label in CLS_CLASSES)
    write_split(root / "split.json", SplitFile("three", 0, "one a class", {"test": tuple(ids)}))
    evaluate("default", data, f"{root / 'split.json'}:test", root / "eval", overlays=2,
             n_boot=50)
    return Bundled(data, root / "eval", real)


@pytest.fixture(scope="module")
def folds(runs, tmp_path_factory) -> Path:
    """A 2-fold cross-validation of a tiny U-Net (`sonocad train --folds all`)."""
    root = tmp_path_factory.mktemp("cv")
    data = runs.data
    write_split(root / "kfold.json", make_folds(open_dataset(data), [], k=2, seed=0))
    (root / "tiny.yaml").write_text(TINY_UNET_RECIPE)
    recipe = load_recipe(root / "tiny.yaml", ["train.epochs=2"])
    return cross_validate(recipe, data, root / "kfold.json", root / "cv", n_boot=50).out_dir


@pytest.fixture(scope="module")
def mixed(bundled, folds) -> Path:
    """The report of a cross-validation and the bundled model's evaluation."""
    out = bundled.evaluation.parent / "mixed.html"
    assert main(["report", str(folds), str(bundled.evaluation), "--out", str(out)]) == 0
    return out


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
    images = [attrs for tag, attrs in elements if tag == "img"]
    # Per run: the curves, 3 overlays, ROC, confusion and reliability charts, 2 heatmaps.
    drawn = [attrs["alt"] for attrs in images]
    for alt, count in {"training curves": 2, "ROC": 2, "confusion matrix": 2,
                       "reliability": 2, "heatmap example": 4}.items():
        assert drawn.count(alt) == count, (alt, drawn)
    assert sum(alt.endswith("case overlay") for alt in drawn) == 6
    for src in (attrs["src"] for attrs in images):
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
    assert "lesion probability (right), in the colours of" in html  # predict's inferno
    # A two-epoch run's curves run against steps, with every step's loss where the trainer
    # logged it (steps.csv).
    steps = json.loads((runs.a / "summary.json").read_text())["steps"]
    assert "against optimiser steps" in html and f"Training ran {steps} optimiser steps (" in html
    assert ("steps.csv" in html) == (runs.a / "steps.csv").is_file()
    # Captions name the images as the data set does, not as their files are named.
    ids = [row["image_id"] for row in read_predictions(runs.a / "eval" / "predictions.csv")]
    assert any(f"Best of those drawn: {i}," in html for i in ids)
    assert "_(" not in html

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
        "absent: no such folder (expected a `sonocad train --out` run folder, a": [
            str(tmp_path / "absent")],
        "holds neither best.pt nor metrics.json": [str(runs.data)],
        "is an evaluation itself; --eval goes with run folders": [
            str(runs.a / "eval"), "--eval", str(runs.a / "eval")],
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


def test_the_normal_groups_undefined_figures_read_na_with_the_reason(runs):
    html = runs.report.read_text(encoding="utf-8")
    # Pixel precision on images without a lesion is 0 by construction: n/a, not 0.000.
    assert '<span class="na">n/a*</span>' in html
    assert "* n/a: images without a lesion have no lesion pixels" in html


def test_the_bundled_models_evaluation_is_reported_without_a_run_folder(bundled, mixed):
    html = mixed.read_text(encoding="utf-8")
    section = html[html.index('id="run-2"'):]
    assert section.count("No training run folder: ") == 1
    assert "evaluates the bundled default model, so there are no training curves" in section
    assert "Source: the bundled default model&#39;s card." in section
    # Its decision rule's final calls stand beside the class head's, counted from the table.
    rows = read_predictions(bundled.evaluation / "predictions.csv")
    right = sum(row["final_class"] == row["label"] for row in rows)
    assert "Class head and final call" in section
    assert f"{right}/{len(rows)}" in section.split("Final call</th>", 1)[1]
    assert 'alt="ROC"' in section
    assert "where the class head&#39;s call and final call sit" in section  # on the ROC


def test_the_bundled_model_on_real_busi_images_names_them(bundled, mixed):
    if not bundled.real:
        pytest.skip(f"BUSI not found at {BUSI_ROOT}: the bundled model was evaluated on "
                    "phantoms")
    html = mixed.read_text(encoding="utf-8")
    ids = [row["image_id"] for row in read_predictions(bundled.evaluation / "predictions.csv")]
    assert all(" (" in i for i in ids)  # BUSI's names: "benign/benign (12).png"
    assert sum(f"{i}, Dice" in html for i in ids) == 2  # the worst and best overlays


def test_a_cross_validation_is_reported_fold_by_fold_and_pooled(folds, mixed):
    html = mixed.read_text(encoding="utf-8")
    section = html[html.index('id="run-1"'):html.index('id="run-2"')]
    assert "Training: 2-fold cross-validation" in section
    assert "<th>fold0</th><th>fold1</th>" in section.replace(' class="num"', "")
    summary = json.loads((folds / "cv_summary.json").read_text())
    dice = summary["mean_sd"]["dice"]
    assert f"{dice['mean']:.3f}" in section and f"{dice['sd']:.3f}" in section
    pooled = json.loads((folds / "oof" / "metrics.json").read_text())["groups"]["lesion"]
    assert f"{pooled['dice']['ci_low']:.3f}–{pooled['dice']['ci_high']:.3f}" in section
    assert 'alt="fold training curves"' in section
    assert "out-of-fold predictions come from 2 fold models" in section
    assert "fold0&#39;s" not in section and "other folds&#39; models differ" in section
    # The summary puts both side by side.
    assert '<a href="#run-1">1. cv</a>' in html and "Headline metrics of each model" in html


@pytest.mark.slow
def test_every_table_column_and_figure_fits_the_printed_page(runs, mixed):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install "
                                                                "-e '.[test]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.print_page_options import PrintOptions

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PRINTABLE_PX, "height": 1100, "deviceScaleFactor": 1, "mobile": False})
        for report in (runs.report, mixed):
            driver.get(report.as_uri())
            width, overflowing = driver.execute_script(OVERFLOWING)
            assert width == PRINTABLE_PX
            assert not overflowing, f"{report}: {overflowing}"
            pdf = report.with_suffix(".pdf")
            pdf.write_bytes(base64.b64decode(driver.print_page(PrintOptions())))
            assert pdf.read_bytes().startswith(b"%PDF")
            print(f"printed: {pdf}")
    finally:
        driver.quit()


# Tables, cells and images that reach past the page's printable width, by their caption.
OVERFLOWING = """
const width = document.documentElement.clientWidth, found = [];
const name = (table) => (table.caption || table).textContent.trim().slice(0, 60);
for (const table of document.querySelectorAll("table")) {
  if (table.getBoundingClientRect().right > width + 0.5) found.push("table: " + name(table));
  for (const cell of table.querySelectorAll("th, td"))
    if (cell.scrollWidth > cell.clientWidth + 1) found.push("cell in: " + name(table));
}
for (const image of document.querySelectorAll("img"))
  if (image.getBoundingClientRect().right > width + 0.5) found.push("image: " + image.alt);
return [width, found];
"""
