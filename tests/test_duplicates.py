"""Duplicate detection: exact copies; re-cropped, zoomed, annotated copies; no false merges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw
from scipy.ndimage import gaussian_filter

from sonocad.data.duplicates import (
    candidate_pairs,
    correlations,
    find_duplicate_groups,
    hash_image,
)
from sonocad.data.sample import Sample


def scan(seed: int, shape: tuple[int, int] = (300, 480)) -> np.ndarray:
    """A synthetic B-mode-like scan: tissue texture, speckle, a dark lesion, depth attenuation.
    Every scan shares the lesion position and the brightness ramp, so only texture tells
    two scans apart (as with real scans)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    tissue = 3 * gaussian_filter(rng.normal(size=shape), 8) + gaussian_filter(
        rng.normal(size=shape), 2)
    tissue = (tissue - tissue.mean()) / tissue.std()
    yy, xx = np.mgrid[:h, :w]
    lesion = ((yy - 0.4 * h) / (0.12 * h)) ** 2 + ((xx - 0.5 * w) / (0.12 * w)) ** 2 < 1
    image = (120 + 40 * tissue) * np.linspace(1.0, 0.35, h)[:, None] * rng.rayleigh(0.8, shape)
    image[lesion] *= 0.25
    return np.clip(image, 0, 255).astype(np.uint8)


def resized(pixels: np.ndarray, factor: float) -> np.ndarray:
    image = PILImage.fromarray(pixels)
    size = (round(image.width * factor), round(image.height * factor))
    return np.asarray(image.resize(size, PILImage.Resampling.BILINEAR))


def annotated(pixels: np.ndarray) -> np.ndarray:
    image = PILImage.fromarray(pixels.copy())
    draw = ImageDraw.Draw(image)
    draw.line((150, 100, 330, 140), fill=255, width=2)  # a caliper
    draw.text((20, 250), "RT UOQ", fill=255)
    return np.asarray(image)


def write(tmp_path: Path, images: dict[str, np.ndarray],
          labels: dict[str, str] | None = None) -> list[Sample]:
    samples = []
    for image_id, pixels in images.items():
        path = tmp_path / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(pixels).save(path)
        label = (labels or {}).get(image_id, image_id.split("/")[0])
        samples.append(Sample(image_id, path, label=label))
    return samples


def as_sets(groups) -> set[frozenset[str]]:
    return {frozenset(g.image_ids) for g in groups}


def test_exact_copies_form_an_exact_group(tmp_path):
    a = scan(1)
    samples = write(tmp_path, {"benign/a.png": a, "benign/a copy.png": a,
                               "benign/b.png": scan(2)})
    [group] = find_duplicate_groups(samples)
    assert group.image_ids == ("benign/a copy.png", "benign/a.png")
    assert group.exact and not group.cross_label and group.labels == ("benign",)
    assert group.to_dict() == {"image_ids": ["benign/a copy.png", "benign/a.png"],
                               "exact": True, "labels": ["benign"], "cross_label": False}


def test_recropped_zoomed_resized_and_annotated_copies_are_one_group(tmp_path):
    a = scan(1)
    copies = {
        "benign/original.png": a,
        "benign/narrower.png": a[:, 70:400],  # a narrower field of view, as BUSI's re-crops
        "benign/zoomed.png": resized(a[30:270, 48:432], 1 / 0.8),
        "benign/smaller.png": resized(a, 0.7),
        "benign/calipers.png": annotated(a),
    }
    others = {f"benign/other{i}.png": scan(i) for i in range(2, 8)}
    groups = find_duplicate_groups(write(tmp_path, copies | others))
    assert as_sets(groups) == {frozenset(copies)}
    assert not groups[0].exact


def test_the_narrow_crop_needs_the_square_hashes():
    # Whole-image pHashes of the narrower copy are too far apart; a square view is close.
    a = scan(1)
    original, narrower = hash_image(a), hash_image(a[:, 70:400])
    whole = (int(original.phashes[0], 16) ^ int(narrower.phashes[0], 16)).bit_count()
    assert whole > 14
    assert candidate_pairs([original, narrower], 14) == [(0, 1)]


def test_different_scans_are_never_merged():
    hashes = [hash_image(scan(seed)) for seed in range(2, 12)]
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    assert correlations(hashes, pairs).max() < 0.5  # copies score above 0.88


def test_same_scan_under_two_labels_is_cross_label(tmp_path):
    a = scan(3)
    samples = write(tmp_path, {"benign/x.png": a, "malignant/y.png": resized(a, 0.9),
                               "normal/z.png": scan(4)})
    [group] = find_duplicate_groups(samples)
    assert group.cross_label and group.labels == ("benign", "malignant") and not group.exact


def test_thresholds_are_honoured(tmp_path):
    a = scan(5)
    samples = write(tmp_path, {"benign/a.png": a, "benign/b.png": a,
                               "benign/c.png": a[:, 70:400]})
    assert as_sets(find_duplicate_groups(samples)) == {frozenset(s.image_id for s in samples)}
    exact_only = {frozenset({"benign/a.png", "benign/b.png"})}
    assert as_sets(find_duplicate_groups(samples, min_correlation=1.01)) == exact_only
    assert as_sets(find_duplicate_groups(samples, max_distance=-1)) == exact_only


def test_precomputed_hashes_are_used_and_progress_sees_the_rest(tmp_path):
    a = scan(6)
    read = write(tmp_path, {"benign/read.png": a})
    missing = [Sample("benign/never-read.png", tmp_path / "no-such-file.png", label="benign")]
    seen = []

    def progress(items):
        for item in items:
            seen.append(item.image_id)
            yield item

    groups = find_duplicate_groups(read + missing, progress=progress,
                                   hashes={"benign/never-read.png": hash_image(a)})
    assert seen == ["benign/read.png"]
    assert groups[0].exact


@pytest.mark.parametrize("pixels", [
    np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30,
    np.dstack([scan(7, (60, 80))] * 3),
    np.zeros((3, 2), np.uint8),
    np.full((70, 20), 9, np.uint8),
])
def test_hash_image_accepts_any_image(pixels):
    hashes = hash_image(pixels)
    assert len(hashes.sha256) == 64 and len(hashes.phashes) == 6
    assert hashes.thumbnail.dtype == np.uint8 and hashes.thumbnail.shape[0] == 64
    # Flat or tiny images verify against themselves without error (and without a fake match).
    assert -1 <= correlations([hashes, hashes], [(0, 1)])[0] <= 1 + 1e-6


def test_identical_values_in_another_dtype_are_not_exact():
    a = scan(8, (50, 60))
    assert hash_image(a).sha256 != hash_image(a.astype(np.uint16)).sha256
    assert hash_image(a).sha256 == hash_image(a.copy()).sha256


# --- BUSI ---------------------------------------------------------------------------------

@pytest.mark.busi
@pytest.mark.slow
def test_busi_known_duplicates(busi_duplicate_groups):
    groups = busi_duplicate_groups  # its time: benchmarks/data_speed.py
    group_of = {i: g for g in groups for i in g.image_ids}

    def together(a: str, b: str) -> bool:
        return a in group_of and b in group_of[a].image_ids

    # Found by eye: a re-crop without the fan's black corners (whole-image pHash 18 bits
    # away), a zoomed axilla copy, and the scans filed under two labels.
    assert together("malignant/malignant (98).png", "malignant/malignant (99).png")
    assert together("malignant/malignant (11).png", "malignant/malignant (113).png")
    assert together("benign/benign (333).png", "malignant/malignant (78).png")
    assert group_of["benign/benign (433).png"].exact
    assert group_of["benign/benign (433).png"].cross_label
    # Different patients whose cysts look alike at low resolution.
    assert not together("benign/benign (149).png", "benign/benign (174).png")
    assert not together("benign/benign (184).png", "benign/benign (45).png")
    assert not together("benign/benign (18).png", "benign/benign (68).png")
    assert 120 <= len(groups) <= 180 and max(len(g.image_ids) for g in groups) <= 6
