"""BUS-BRA: the adapter, `data check`, the frozen patient-level split and its held-out scanner.

Skips where ../shared/datasets/busbra is absent."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from sonocad.cli import main
from sonocad.data.adapters import detect_layout, open_dataset
from sonocad.data.sample import Sample
from sonocad.data.split import read_split

SPLITS = Path(__file__).resolve().parents[1] / "benchmarks" / "splits"
SCANNERS = {"GE Logiq 5", "GE Logiq 7", "Toshiba Aplio 300", "U-Systems"}


@pytest.fixture(scope="module")
def samples(busbra_root: Path) -> dict[str, Sample]:
    return {s.image_id: s for s in open_dataset(busbra_root)}


@pytest.fixture(scope="module")
def check_report(busbra_root: Path, tmp_path_factory) -> tuple[str, dict]:
    """`sonocad data check` once for the module: its console text and JSON report."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("check") / "report.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["data", "check", str(busbra_root), "--json", str(path)]) == 0
    return out.getvalue(), json.loads(path.read_text())


def test_the_layout_is_detected_and_patients_are_the_case_column(busbra_root, samples):
    assert detect_layout(busbra_root) == "busbra"
    with (busbra_root / "bus_data.csv").open(newline="") as handle:
        table = {row["ID"]: row for row in csv.DictReader(handle)}
    assert len(samples) == len(table) == 1875
    for sample in samples.values():
        row = table[Path(sample.image_id).stem]
        assert sample.patient_id == row["Case"]
        assert sample.label == row["Pathology"]
        assert row["Device"].startswith(sample.scanner)
        assert sample.clinical["birads"] == row["BIRADS"]
        assert sample.source == "busbra"
        assert len(sample.mask_paths) == 1 and sample.mask_paths[0].is_file()


def test_data_check_counts_classes_scanners_patients_and_duplicates(check_report):
    text, report = check_report
    assert report["n_images"] == 1875 and report["n_errors"] == 0
    assert report["class_counts"] == {"benign": 1268, "malignant": 607}
    assert set(report["scanner_counts"]) == SCANNERS
    assert sum(report["scanner_counts"].values()) == 1875
    assert report["n_patients"] == 1064
    assert sum(k * n for k, n in ((int(k), n) for k, n in report["images_per_patient"].items())
               ) == 1875
    assert "1875 images" in text and "patients: 1064" in text and "Toshiba Aplio 300 139" in text
    assert "duplicate groups:" in text


def test_frozen_split_keeps_patients_and_duplicates_together(samples, check_report):
    split = read_split(SPLITS / "busbra.json")
    assert sorted(split.image_ids) == sorted(samples)
    subset_of = {image_id: name for name, ids in split.subsets.items() for image_id in ids}
    patients: dict[str, set[str]] = {}
    for image_id, sample in samples.items():
        patients.setdefault(sample.patient_id, set()).add(subset_of[image_id])
    assert all(len(subsets) == 1 for subsets in patients.values())
    for group in check_report[1]["duplicate_groups"]:
        assert len({subset_of[i] for i in group["image_ids"]}) == 1


def test_frozen_split_is_about_70_15_15_stratified_by_class_and_scanner(samples):
    split = read_split(SPLITS / "busbra.json")
    everyone = Counter((s.label, s.scanner) for s in samples.values())
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        ids = split.subsets[name]
        assert len(ids) / len(samples) == pytest.approx(share, abs=0.02)
        counts = Counter((samples[i].label, samples[i].scanner) for i in ids)
        for stratum, total in everyone.items():
            # Each stratum's share of the subset is its share of the data set, within 1.5
            # points (U-Systems has 25 images: a few patients either way).
            assert counts[stratum] / len(ids) == pytest.approx(total / len(samples), abs=0.015)


def test_toshiba_is_held_out_whole_and_the_rest_stays_where_it_was(samples):
    base = read_split(SPLITS / "busbra.json")
    held = read_split(SPLITS / "busbra_without_toshiba.json")
    toshiba = {i for i, s in samples.items() if s.scanner == "Toshiba Aplio 300"}
    assert set(held.subsets["held_out"]) == toshiba and len(toshiba) == 139
    for name in ("train", "val", "test"):
        assert set(held.subsets[name]) == set(base.subsets[name]) - toshiba
