"""Split invariants: grouped, stratified, deterministic, fractions kept; split files round-trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sonocad.data.sample import Sample
from sonocad.data.split import (
    FORMAT,
    SplitFile,
    make_folds,
    make_split,
    read_split,
    resolve_subset,
    select,
    write_split,
)
from sonocad.errors import InputError, SonocadError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUSI_SPLIT = PROJECT_ROOT / "benchmarks" / "splits" / "busi.json"
CLASSES = {"benign": 150, "malignant": 90, "normal": 60}


def synthetic(seed: int = 0) -> tuple[list[Sample], list[list[str]]]:
    """300 images; a third belong to multi-image patients; 25 duplicate groups, some spanning
    patients and labels, so units chain across both kinds of link."""
    rng = random.Random(seed)
    samples = []
    for label, n in CLASSES.items():
        for i in range(n):
            image_id = f"{label}/{label} ({i}).png"
            patient = f"p{rng.randrange(40)}" if rng.random() < 0.33 else None
            samples.append(Sample(image_id, Path("/data/synth") / image_id, label=label,
                                  patient_id=patient))
    ids = [s.image_id for s in samples]
    groups = [rng.sample(ids, rng.choice((2, 2, 3))) for _ in range(25)]
    return samples, groups


def subset_of(split: SplitFile) -> dict[str, str]:
    return {i: name for name, ids in split.subsets.items() for i in ids}


def assert_grouped(split: SplitFile, samples: list[Sample], groups: list[list[str]]) -> None:
    where = subset_of(split)
    for group in groups:
        assert len({where[i] for i in group}) == 1, group
    by_patient: dict[str, set[str]] = {}
    for s in samples:
        if s.patient_id:
            by_patient.setdefault(s.patient_id, set()).add(where[s.image_id])
    assert all(len(names) == 1 for names in by_patient.values()), by_patient


def class_share(ids, samples: list[Sample]) -> dict[str, float]:
    label = {s.image_id: s.label for s in samples}
    counts = Counter(label[i] for i in ids)
    return {c: counts[c] / len(ids) for c in CLASSES}


def test_split_keeps_patients_and_duplicate_groups_whole():
    samples, groups = synthetic()
    split = make_split(samples, groups, seed=0)
    assert_grouped(split, samples, groups)


def test_split_covers_every_image_once_with_sorted_ids():
    samples, groups = synthetic()
    split = make_split(samples, groups, seed=0)
    assert list(split.subsets) == ["train", "val", "test"]
    all_ids = [i for ids in split.subsets.values() for i in ids]
    assert sorted(all_ids) == sorted(s.image_id for s in samples)
    assert len(set(all_ids)) == len(all_ids)
    assert all(list(ids) == sorted(ids) for ids in split.subsets.values())


def test_split_respects_fractions_and_class_proportions():
    samples, groups = synthetic()
    overall = class_share([s.image_id for s in samples], samples)
    for fractions in [(0.70, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.2, 0.0)]:
        split = make_split(samples, groups, fractions=fractions, seed=1)
        for name, fraction in zip(("train", "val", "test"), fractions):
            ids = split.subsets[name]
            assert abs(len(ids) / len(samples) - fraction) <= 0.04, (fractions, name, len(ids))
            if ids:
                share = class_share(ids, samples)
                assert all(abs(share[c] - overall[c]) <= 0.05 for c in CLASSES), (name, share)


def test_split_is_deterministic_per_seed():
    samples, groups = synthetic()
    a = make_split(samples, groups, seed=3)
    b = make_split(list(reversed(samples)), groups, seed=3)  # input order does not matter
    c = make_split(samples, groups, seed=4)
    assert a.subsets == b.subsets
    assert a.subsets["test"] != c.subsets["test"]


def test_folds_cover_every_image_once_and_keep_groups():
    samples, groups = synthetic()
    folds = make_folds(samples, groups, k=5, seed=0)
    assert list(folds.subsets) == [f"fold{i}" for i in range(5)]
    counted = Counter(i for ids in folds.subsets.values() for i in ids)
    assert set(counted) == {s.image_id for s in samples} and set(counted.values()) == {1}
    assert_grouped(folds, samples, groups)
    assert all(abs(len(ids) - 60) <= 8 for ids in folds.subsets.values())


def test_folds_with_held_out_test():
    samples, groups = synthetic()
    folds = make_folds(samples, groups, k=4, seed=0, test_fraction=0.2)
    assert list(folds.subsets) == ["fold0", "fold1", "fold2", "fold3", "test"]
    assert abs(len(folds.subsets["test"]) - 60) <= 10
    assert sum(map(len, folds.subsets.values())) == len(samples)
    assert_grouped(folds, samples, groups)
    assert folds.to_dict()["k"] == 4 and folds.to_dict()["test_fraction"] == 0.2


def test_unlabelled_images_and_unknown_group_ids_are_accepted():
    samples = [Sample(f"img{i}.png", Path(f"/d/img{i}.png")) for i in range(40)]
    split = make_split(samples, [["img1.png", "img2.png", "not-in-this-set.png"]], seed=0)
    assert subset_of(split)["img1.png"] == subset_of(split)["img2.png"]
    assert sum(map(len, split.subsets.values())) == 40


@pytest.mark.parametrize("kwargs", [
    {"fractions": (0.7, 0.2, 0.2)}, {"fractions": (0.5, 0.5)}, {"fractions": (1.2, -0.1, -0.1)},
    {"fractions": (0.0, 0.5, 0.5)},
])
def test_bad_fractions_are_rejected(kwargs):
    samples, groups = synthetic()
    with pytest.raises(SonocadError, match="fractions"):
        make_split(samples, groups, **kwargs)


def test_bad_fold_arguments_are_rejected():
    samples, groups = synthetic()
    with pytest.raises(SonocadError, match="k >= 2"):
        make_folds(samples, groups, k=1)
    with pytest.raises(SonocadError, match="test fraction"):
        make_folds(samples, groups, k=3, test_fraction=1.0)
    few = samples[:3]
    with pytest.raises(SonocadError, match="cannot make 5 folds from 3"):
        make_folds(few, [], k=5)


# --- split files --------------------------------------------------------------------------

def test_split_file_round_trip(tmp_path):
    samples, groups = synthetic()
    split = make_split(samples, groups, seed=0, dataset="synth")
    path = tmp_path / "sub" / "split.json"
    write_split(path, split)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["dataset"] == "synth" and data["seed"] == 0
    assert data["fractions"] == [0.7, 0.15, 0.15] and len(data["fingerprint"]) == 64
    assert read_split(path) == split
    folds = make_folds(samples, groups, k=3, seed=2)
    write_split(path, folds)
    assert read_split(path) == folds


def test_fingerprint_names_the_image_set():
    samples, groups = synthetic()
    a = make_split(samples, groups, seed=0)
    b = make_split(samples, groups, seed=1)
    c = make_split(samples[1:], groups, seed=0)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.dataset == "synth"  # the folder above the image ids


def test_resolve_subset_and_select(tmp_path):
    samples, groups = synthetic()
    path = tmp_path / "split.json"
    write_split(path, make_split(samples, groups, seed=0))
    split, name = resolve_subset(f"{path}:test")
    assert name == "test"
    chosen = select(samples, split.subsets["test"])
    assert [s.image_id for s in chosen] == list(split.subsets["test"])
    with pytest.raises(SonocadError, match=r"2 image\(s\) .*not in the dataset: a.png, b.png"):
        select(samples, ["a.png", "b.png", samples[0].image_id])


@pytest.mark.parametrize("content, problem", [
    (None, "no such split file"),
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a split file"),
    (f'{{"format": "{FORMAT}", "subsets": {{"train": "a.png"}}}}', "lists of image ids"),
    (f'{{"format": "{FORMAT}", "subsets": {{"train": ["a"], "test": ["a"]}}}}',
     "'a' is in both subsets 'train' and 'test'"),
    (f'{{"format": "{FORMAT}", "fingerprint": "0", "subsets": {{"train": ["a"]}}}}',
     "fingerprint does not match"),
    (f'{{"format": "{FORMAT}", "seed": "x", "subsets": {{"train": ["a"]}}}}', "bad field"),
])
def test_bad_split_files_name_the_problem(tmp_path, content, problem):
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        resolve_subset(f"{path}:test")
    assert info.value.path == path


def test_resolve_subset_errors(tmp_path):
    samples, groups = synthetic()
    path = tmp_path / "split.json"
    write_split(path, make_split(samples, groups, seed=0))
    with pytest.raises(InputError, match="no subset 'tset'; it has train, val, test"):
        resolve_subset(f"{path}:tset")
    with pytest.raises(InputError, match="FILE:SUBSET"):
        resolve_subset(str(path))


# --- the frozen BUSI split ----------------------------------------------------------------

def test_committed_busi_split_is_a_valid_70_15_15_split():
    split = read_split(BUSI_SPLIT)
    assert split.dataset == "BUSI" and split.seed == 0 and len(split.image_ids) == 780
    for name, fraction in zip(("train", "val", "test"), (0.70, 0.15, 0.15)):
        assert abs(len(split.subsets[name]) / 780 - fraction) <= 0.02


@pytest.mark.busi
@pytest.mark.slow
def test_committed_busi_split_keeps_every_duplicate_group_in_one_subset(busi_root,
                                                                        busi_duplicate_groups):
    from sonocad.data.adapters import open_dataset

    split = read_split(BUSI_SPLIT)
    samples = open_dataset(busi_root)
    counted = Counter(i for ids in split.subsets.values() for i in ids)
    assert sorted(counted) == sorted(s.image_id for s in samples) and len(counted) == 780
    assert set(counted.values()) == {1}
    where = subset_of(split)
    groups = busi_duplicate_groups
    assert len(groups) > 100  # the detector did run and found BUSI's duplicates
    split_apart = [g.image_ids for g in groups if len({where[i] for i in g.image_ids}) > 1]
    assert split_apart == []
