"""The synthetic phantom: deterministic, lesion where the mask says, artefacts outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from sonocad.data.phantom import make_phantom, write_phantom_dataset

LABELS = ("normal", "benign", "malignant")
SEEDS = range(10)


def _solidity(mask: np.ndarray) -> float:
    """Lesion area over the area of its convex hull (pixel corners, so a square scores 1)."""
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    points = (np.argwhere(mask)[:, None, :] + corners).reshape(-1, 2)
    return float(mask.sum() / ConvexHull(points).volume)


def _height_over_width(mask: np.ndarray) -> float:
    rows, columns = np.nonzero(mask)
    return (np.ptp(rows) + 1) / (np.ptp(columns) + 1)


@pytest.mark.parametrize("label", LABELS)
def test_same_seed_same_pixels_and_other_seed_differs(label: str) -> None:
    first, again = make_phantom(label, seed=3), make_phantom(label, seed=3)
    other = make_phantom(label, seed=4)
    assert first.image.dtype == np.uint8 and first.mask.dtype == bool
    assert first.image.shape == first.mask.shape == (256, 256)
    assert first.label == label
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.mask, again.mask)
    assert np.mean(first.image != other.image) > 0.5


def test_unknown_label_and_tiny_size_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown label"):
        make_phantom("cyst")
    with pytest.raises(ValueError, match="too small"):
        make_phantom("benign", size=(16, 256))


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_empty_only_for_normal(seed: int) -> None:
    assert not make_phantom("normal", seed=seed).mask.any()
    assert make_phantom("benign", seed=seed).mask.any()
    assert make_phantom("malignant", seed=seed).mask.any()


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_lesion_is_hypoechoic(label: str) -> None:
    for seed in SEEDS:
        phantom = make_phantom(label, seed=seed)
        ring = (ndimage.binary_dilation(phantom.mask, iterations=12)
                & ~ndimage.binary_dilation(phantom.mask, iterations=4))
        lesion_mean, ring_mean = phantom.image[phantom.mask].mean(), phantom.image[ring].mean()
        assert lesion_mean < ring_mean - 40, (seed, lesion_mean, ring_mean)


def test_malignant_shapes_are_less_convex_and_taller_than_benign() -> None:
    benign = [make_phantom("benign", seed=seed).mask for seed in SEEDS]
    malignant = [make_phantom("malignant", seed=seed).mask for seed in SEEDS]
    benign_solidity = np.mean([_solidity(mask) for mask in benign])
    malignant_solidity = np.mean([_solidity(mask) for mask in malignant])
    assert benign_solidity > 0.93
    assert malignant_solidity < benign_solidity - 0.1
    assert all(_height_over_width(mask) < 1 for mask in benign)  # wider than tall
    assert (np.mean([_height_over_width(mask) for mask in malignant])
            > np.mean([_height_over_width(mask) for mask in benign]) + 0.3)


def test_tissue_is_brighter_near_the_top() -> None:
    image = make_phantom("normal", seed=0).image.astype(float)
    height = image.shape[0]
    # Below the skin line, above the pectoral muscle versus the deepest tenth.
    assert image[height // 10: height // 3].mean() > image[-height // 10:].mean() + 20


@pytest.mark.parametrize(("label", "sign"), [("benign", 1), ("malignant", -1)])
def test_posterior_enhancement_and_shadow(label: str, sign: int) -> None:
    for seed in range(5):
        lesion = make_phantom(label, seed=seed)
        normal = make_phantom("normal", seed=seed)  # the same background without the lesion
        columns = np.flatnonzero(lesion.mask.any(axis=0))
        bottom = np.flatnonzero(lesion.mask.any(axis=1))[-1]
        behind = np.s_[bottom + 10:, columns[len(columns) // 4]: columns[3 * len(columns) // 4]]
        change = lesion.image[behind].mean() - normal.image[behind].mean()
        assert sign * change > 5, (seed, change)


def test_a_lesion_changes_only_its_own_region() -> None:
    lesion, normal = make_phantom("malignant", seed=2), make_phantom("normal", seed=2)
    rows, columns = np.nonzero(lesion.mask)
    margin = 30  # the PSF, the halo and the lateral softening of the shadow
    outside = np.ones(lesion.mask.shape, dtype=bool)
    left = max(columns.min() - margin, 0)
    outside[max(rows.min() - margin, 0):, left: columns.max() + margin] = False
    assert outside.any()
    np.testing.assert_array_equal(lesion.image[outside], normal.image[outside])


@pytest.mark.parametrize("label", LABELS)
def test_calipers_and_text_change_the_image_but_not_the_mask(label: str) -> None:
    plain = make_phantom(label, seed=5)
    for marked in (make_phantom(label, seed=5, calipers=True),
                   make_phantom(label, seed=5, text=True),
                   make_phantom(label, seed=5, calipers=True, text=True)):
        np.testing.assert_array_equal(marked.mask, plain.mask)
        changed = marked.image != plain.image
        assert 10 < changed.sum() < 0.05 * changed.size
        assert marked.image[changed].min() >= 220  # burned-in marks are bright


def test_calipers_sit_at_the_lesion_ends() -> None:
    plain = make_phantom("benign", seed=1)
    marked = make_phantom("benign", seed=1, calipers=True)
    marks = np.argwhere(marked.image != plain.image)
    columns = np.flatnonzero(plain.mask.any(axis=0))
    assert abs(marks[:, 1].min() - columns.min()) <= 6
    assert abs(marks[:, 1].max() - columns.max()) <= 6


@pytest.mark.parametrize("size", [(200, 320), (320, 200), (48, 64)])
def test_non_square_sizes(size: tuple[int, int]) -> None:
    for label in LABELS:
        phantom = make_phantom(label, size=size, seed=7, calipers=True, text=True)
        assert phantom.image.shape == phantom.mask.shape == size
        assert phantom.mask.any() == (label != "normal")


def test_write_phantom_dataset_uses_the_busi_layout(tmp_path) -> None:
    paths = write_phantom_dataset(tmp_path, per_class=2, size=(96, 128), seed=1)
    expected = {f"{label}/{label} ({n}){suffix}.png"
                for label in LABELS for n in (1, 2) for suffix in ("", "_mask")}
    written = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.png")}
    assert written == expected
    assert [path.relative_to(tmp_path).as_posix() for path in paths] == [
        f"{label}/{label} ({n}).png" for label in LABELS for n in (1, 2)]
    images = []
    for path in paths:
        image = Image.open(path)
        mask = Image.open(path.with_name(f"{path.stem}_mask.png"))
        assert image.mode == mask.mode == "L"
        assert image.size == mask.size == (128, 96)
        mask_pixels = np.asarray(mask)
        assert set(np.unique(mask_pixels)) <= {0, 255}
        assert mask_pixels.any() == (path.parent.name != "normal")
        images.append(np.asarray(image))
    # Every image has its own seed: no two share a background.
    assert all(np.mean(a != b) > 0.5 for i, a in enumerate(images) for b in images[i + 1:])


def test_write_phantom_dataset_refuses_an_empty_request(tmp_path) -> None:
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, per_class=0)
