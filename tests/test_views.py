"""Training views (`sonocad.data.views`): lesion-free windows are lesion-free, lesion windows hold
the whole lesion, and every kind is drawn from one size distribution."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.torch_dataset import SampleDataset
from sonocad.data.views import ViewConfig, draw_view, tissue_view
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig, build_transform

CLASSES = ["normal", "benign", "malignant"]


def _scan(lesion: tuple[slice, slice] | None = (slice(100, 160), slice(150, 260))
          ) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.arange(300 * 400, dtype=np.uint32).reshape(300, 400)  # every pixel its own
    mask = np.zeros((300, 400), bool)
    if lesion is not None:
        mask[lesion] = True
    return pixels, mask


def _kinds(mask: np.ndarray, config: ViewConfig, n: int = 600) -> Counter:
    pixels, _ = _scan()
    rng, kinds = np.random.default_rng(0), Counter()
    for _ in range(n):
        view = draw_view(pixels, mask, config, rng)
        top, left = divmod(int(view.pixels[0, 0]), 400)
        height, width = view.pixels.shape
        assert np.array_equal(view.mask, mask[top:top + height, left:left + width])
        if view.tissue:
            assert not view.mask.any()
        elif mask.any():
            assert view.mask.sum() == mask.sum()  # the whole lesion
        kinds["tissue" if view.tissue else "whole" if view.pixels.shape == mask.shape
              else "window"] += 1
    return kinds


def test_lesion_images_give_lesion_free_and_whole_lesion_windows() -> None:
    _, mask = _scan()
    kinds = _kinds(mask, ViewConfig(p=1.0, tissue=0.5, scale=(0.2, 0.5), margin=0.02))
    assert kinds["tissue"] > 150 and kinds["window"] > 150


def test_windows_are_drawn_for_a_share_p_and_normal_images_get_them_too() -> None:
    _, empty = _scan(None)
    kinds = _kinds(empty, ViewConfig(p=0.3))
    assert kinds["tissue"] == 0 and 0.2 < kinds["window"] / 600 < 0.4


def test_window_sizes_do_not_depend_on_the_kind() -> None:
    pixels, mask = _scan((slice(130, 150), slice(190, 210)))  # small: most sizes fit both ways
    config = ViewConfig(p=1.0, tissue=0.5, scale=(0.3, 0.6), margin=0.0)
    rng = np.random.default_rng(1)
    areas: dict[bool, list[int]] = {True: [], False: []}
    for _ in range(800):
        view = draw_view(pixels, mask, config, rng)
        areas[view.tissue].append(view.pixels.size)
    assert abs(np.median(areas[True]) / np.median(areas[False]) - 1) < 0.15


def test_a_lesion_that_fills_the_image_leaves_it_whole() -> None:
    pixels, mask = _scan((slice(0, 300), slice(0, 400)))
    view = draw_view(pixels, mask, ViewConfig(p=1.0, tissue=1.0), np.random.default_rng(0))
    assert view.pixels.shape == pixels.shape and not view.tissue
    assert tissue_view(pixels, mask, ViewConfig(p=1.0), np.random.default_rng(0)) is None


def test_tissue_view_is_seeded_and_lesion_free() -> None:
    pixels, mask = _scan()
    first = tissue_view(pixels, mask, ViewConfig(p=0.0), np.random.default_rng([7, 3]))
    again = tissue_view(pixels, mask, ViewConfig(p=0.0), np.random.default_rng([7, 3]))
    assert first is not None and first.tissue and not first.mask.any()
    assert np.array_equal(first.pixels, again.pixels)


@pytest.mark.parametrize("bad", [{"p": 1.5}, {"p": 0.5, "scale": (0.8, 0.2)},
                                 {"p": 0.5, "margin": 0.6}, {"p": 0.5, "tissue": -0.1}])
def test_a_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        ViewConfig(**bad)


def test_the_dataset_trains_a_lesion_free_window_as_a_normal_image(tmp_path) -> None:
    samples = [s for s in open_dataset(write_phantom_dataset_at(tmp_path))
               if s.label in ("benign", "malignant")]
    dataset = SampleDataset(samples, get_task("multitask"), CLASSES,
                            build_transform(TransformConfig(input_size=64), train=True),
                            views=ViewConfig(p=1.0, tissue=1.0, scale=(0.2, 0.35), margin=0.0))
    items = [dataset[(index, seed)] for index in range(len(samples)) for seed in range(3)]
    windows = [item for item in items if item["label"] == CLASSES.index("normal")]
    assert len(windows) > len(items) // 2
    assert all(not item["mask"].any() for item in windows)
    assert dataset[0]["label"] != CLASSES.index("normal")  # unseeded (validation): whole


def test_score_views_adds_one_normal_record_per_lesion_image_that_has_room(tmp_path) -> None:
    from sonocad.inference.predictor import Predictor
    from sonocad.workflows.decision_fit import score_views

    samples = open_dataset(write_phantom_dataset_at(tmp_path))
    records = score_views(Predictor.default(), samples, ViewConfig(p=0.0, scale=(0.2, 0.35)))
    lesions = [s for s in samples if s.label != "normal"]
    assert 0 < len(records) <= len(lesions)
    assert {r.label for r in records} == {"normal"} and all(r.iou is None for r in records)


def write_phantom_dataset_at(folder: Path) -> Path:
    data = folder / "data"
    write_phantom_dataset(data, per_class=2, size=(160, 200), seed=3)
    return data
