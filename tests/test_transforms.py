"""Preprocessing and augmentation: shapes, alignment of image/mask/boxes, config round trip."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from sonocad.errors import SonocadError
from sonocad.transforms import (
    AUGMENTATIONS,
    TransformConfig,
    build_transform,
    restore_size,
    to_model_input,
    to_unit_float,
)

GEOMETRIC = {"hflip": {"p": 1.0}, "vflip": {"p": 0.5}, "rotation": {"degrees": 30, "p": 1.0},
             "affine": {"p": 1.0}}


def speckled(shape: tuple[int, ...] = (120, 160), seed: int = 0) -> np.ndarray:
    """A noisy grey image with a smooth gradient, like a B-mode frame."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0.2, 0.7, shape[1])[None, :]
    image = np.clip(gradient * rng.rayleigh(0.8, shape[:2]), 0, 1) * 255
    return image.astype(np.uint8)


def phantom(shape: tuple[int, int] = (120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A dark image with one bright off-centre square, and that square as the mask."""
    image = np.full(shape, 20, dtype=np.uint8)
    mask = np.zeros(shape, dtype=bool)
    mask[20:60, 30:80] = True
    image[mask] = 230
    return image, mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("pixels", [
    speckled(),
    np.stack([speckled(), speckled(seed=1), speckled(seed=2)], axis=-1),
    speckled().astype(np.uint16) * 257,
], ids=["grey-uint8", "rgb-uint8", "grey-uint16"])
@pytest.mark.parametrize("train", [False, True])
def test_shapes_and_dtypes(pixels: np.ndarray, train: bool) -> None:
    _, mask = phantom()
    transform = build_transform({"input_size": [96, 128], "augment": GEOMETRIC}, train=train)
    image, mask_out = transform(pixels, mask)
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32
    assert type(image) is torch.Tensor and type(mask_out) is torch.Tensor
    assert mask_out.shape == (1, 96, 128) and mask_out.dtype == torch.float32
    assert set(mask_out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert transform(pixels)[1] is None


def test_uint16_uses_the_full_range() -> None:
    pixels = np.array([[0, 300, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(to_unit_float(pixels)[0, 0], [0, 300 / 65535, 1], rtol=1e-6)
    grey8 = speckled()
    config = {"normalize": "unit", "keep_aspect": False}
    as16 = to_model_input(grey8.astype(np.uint16) * 257, config)
    torch.testing.assert_close(as16, to_model_input(grey8, config), atol=1e-6, rtol=0)


def test_rgb_is_grey_unless_asked_to_keep_colour() -> None:
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # a pure red frame
    grey = to_model_input(rgb, {"normalize": "unit"})
    assert torch.allclose(grey, torch.full_like(grey, 0.299), atol=1e-3)
    colour = to_model_input(rgb, {"normalize": "unit", "grayscale": False})
    assert colour[0].min() > 0.99 and colour[1:].max() < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_mask_and_boxes_follow_the_image_under_geometric_augmentation(seed: int) -> None:
    pixels, mask = phantom()
    box = [[30, 20, 80, 60]]  # xyxy around the square
    transform = build_transform({"normalize": "unit", "augment": GEOMETRIC}, train=True)
    torch.manual_seed(seed)
    image, mask_out, boxes = transform(pixels, mask, box)
    bright = image[0] > 0.5
    lesion = mask_out[0] > 0
    assert set(mask_out.unique().tolist()) == {0.0, 1.0}
    assert iou(bright, lesion) > 0.9
    # The square moved: hflip (p=1) sends the off-centre square to the other side.
    still, _ = build_transform({"normalize": "unit"}, train=False)(pixels, mask)
    assert iou(bright, still[0] > 0.5) < 0.5
    # Rotation gives the box enclosing the rotated square: it holds the mask, not much more.
    rows, cols = torch.nonzero(lesion, as_tuple=True)
    x0, y0, x1, y1 = boxes[0].tolist()
    assert x0 <= cols.min() + 1 and y0 <= rows.min() + 1
    assert x1 >= cols.max() and y1 >= rows.max()
    assert (x1 - x0) * (y1 - y0) < 2.5 * lesion.sum()


def test_boxes_mirror_under_hflip_and_follow_the_letterbox() -> None:
    pixels, mask = phantom((100, 200))
    box = [[30, 20, 80, 60]]
    same_size = {"input_size": [100, 200], "keep_aspect": False, "augment": {"hflip": {"p": 1}}}
    _, _, boxes = build_transform(same_size, train=True)(pixels, mask, box)
    torch.testing.assert_close(boxes, torch.tensor([[200 - 80, 20, 200 - 30, 60.0]]))
    # Letterbox to 100x100: scale 0.5, 25 px bar on top.
    _, mask_out, boxes = build_transform({"input_size": 100}, train=False)(pixels, mask, box)
    torch.testing.assert_close(boxes, torch.tensor([[15, 35, 40, 55.0]]))
    rows, cols = torch.nonzero(mask_out[0], as_tuple=True)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (15, 35, 40, 55)


def test_eval_is_deterministic_and_train_replays_from_the_seed() -> None:
    pixels, mask = speckled(), phantom()[1]
    everything = {name: {"p": 1.0} for name in AUGMENTATIONS}
    evaluate = build_transform({"augment": everything}, train=False)
    torch.manual_seed(1)
    first = evaluate(pixels, mask)
    torch.manual_seed(2)
    second = evaluate(pixels, mask)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    train = build_transform({"augment": everything}, train=True)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(train(pixels, mask)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], first[0]) and torch.isfinite(runs[0]).all()


def test_augmentations_with_p_zero_change_nothing() -> None:
    never = {name: {"p": 0.0} for name in AUGMENTATIONS}
    pixels, mask = phantom()
    augmented = build_transform({"augment": never}, train=True)(pixels, mask)
    plain = build_transform({}, train=False)(pixels, mask)
    assert all(torch.equal(a, b) for a, b in zip(augmented, plain))


def test_every_augmentation_runs_alone_and_changes_the_image() -> None:
    pixels = speckled()
    plain = to_model_input(pixels, {"normalize": "unit"})
    for name in AUGMENTATIONS:
        config = {"normalize": "unit", "augment": {name: {"p": 1.0}}}
        torch.manual_seed(0)
        image, _ = build_transform(config, train=True)(pixels)
        assert not torch.allclose(image, plain, atol=1e-3), name


def test_zscore_uses_the_image_content() -> None:
    pixels = speckled()
    stretched = to_model_input(pixels, {"keep_aspect": False})
    assert abs(float(stretched.mean())) < 1e-4 and abs(float(stretched.std()) - 1) < 1e-3
    # Letterboxed 120x160 -> 192x256 content in rows 32..224: statistics come from there,
    # and the bars are black (the lowest value an empty pixel can take).
    boxed = to_model_input(pixels, {})
    content = boxed[:, 32:224]
    assert abs(float(content.mean())) < 1e-4 and abs(float(content.std()) - 1) < 1e-3
    assert torch.all(boxed[:, :32] == boxed.min())


def test_imagenet_and_unit_normalisation() -> None:
    flat = np.full((32, 32), 128, dtype=np.uint8)
    unit = to_model_input(flat, {"normalize": "unit"})
    torch.testing.assert_close(unit, torch.full_like(unit, 128 / 255))
    imagenet = to_model_input(flat, {"normalize": "imagenet"})
    expected = [(128 / 255 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    torch.testing.assert_close(imagenet.mean(dim=(1, 2)), torch.tensor(expected))


@pytest.mark.parametrize("config, key", [
    ({"input_sise": 256}, "input_sise"),
    ({"augment": {"hflp": True}}, "augment.hflp"),
    ({"augment": {"rotation": {"degree": 10}}}, "augment.rotation.degree"),
    ({"normalize": "minmax"}, "normalize"),
    ({"despeckle": "bilateral"}, "despeckle"),
    ({"despeckle_size": 4}, "despeckle_size"),
    ({"augment": {"hflip": {"p": 2}}}, "augment.hflip"),
    ({"augment": {"rotation": {"degrees": -5}}}, "augment.rotation"),
    ({"input_size": [256]}, "input_size"),
])
def test_config_errors_name_the_key(config: dict, key: str) -> None:
    with pytest.raises(SonocadError, match=key.replace(".", r"\.")):
        build_transform(config, train=True)


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(SonocadError, match="uint8 or uint16"):
        to_model_input(np.zeros((8, 8), dtype=np.float32), {})
    with pytest.raises(SonocadError, match="does not match"):
        build_transform({}, train=False)(speckled(), np.zeros((5, 5), dtype=bool))


def test_config_round_trips_through_plain_data() -> None:
    config = TransformConfig(input_size=(96, 128), normalize="imagenet", despeckle="gaussian",
                             despeckle_size=3, clahe=True, keep_aspect=False,
                             augment={"affine": {"scale": (0.8, 1.2)}, "speckle": True,
                                      "vflip": None})
    data = json.loads(json.dumps(config.to_dict()))  # what a checkpoint stores
    assert TransformConfig.from_dict(data) == config
    assert set(config.augment) == {"affine", "speckle"}
    assert config.augment["affine"] == {"p": 0.5, "scale": [0.8, 1.2], "translate": [0.1, 0.1]}
    pixels = speckled()
    torch.manual_seed(3)
    before = build_transform(config, train=True)(pixels)[0]
    torch.manual_seed(3)
    after = pickle.loads(pickle.dumps(build_transform(data, train=True)))(pixels)[0]
    assert torch.equal(before, after)


@pytest.mark.parametrize("option", [{"despeckle": "median"}, {"despeckle": "gaussian"}])
def test_despeckle_smooths_speckle(option: dict) -> None:
    pixels = speckled()
    config = {"normalize": "unit", "keep_aspect": False, "input_size": [120, 160]}
    plain = to_model_input(pixels, config)
    filtered = to_model_input(pixels, {**config, **option})
    roughness = [float((x[0, :, 1:] - x[0, :, :-1]).abs().mean()) for x in (plain, filtered)]
    assert roughness[1] < 0.6 * roughness[0]


def test_clahe_raises_local_contrast() -> None:
    pixels = (speckled().astype(np.float32) * 0.2 + 100).astype(np.uint8)  # a washed-out frame
    config = {"normalize": "unit", "keep_aspect": False}
    plain = to_model_input(pixels, config)
    enhanced = to_model_input(pixels, {**config, "clahe": True})
    assert float(enhanced.std()) > 2 * float(plain.std())


def test_restore_size_undoes_the_letterbox() -> None:
    pixels, mask = phantom((90, 200))
    _, mask_out = build_transform({"input_size": 128}, train=False)(pixels, mask)
    restored = restore_size(mask_out, mask.shape, {"input_size": 128})
    assert restored.shape == (1, 90, 200)
    assert iou(restored[0] > 0.5, torch.from_numpy(mask)) > 0.95


def test_depth_gain_scales_rows_smoothly_and_leaves_the_mask() -> None:
    flat = np.full((64, 64), 128, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10:30] = True
    config = {"input_size": 64, "normalize": "unit", "augment": {"depth_gain": {"p": 1.0}}}
    torch.manual_seed(4)
    image, out_mask = build_transform(config, train=True)(flat, mask)
    rows = image[0].mean(1)
    assert torch.allclose(image[0], rows[:, None].expand(64, 64))  # one gain per depth
    assert rows.max() / rows.min() > 1.05  # the gain changes with depth...
    assert (rows.diff().abs() < 0.05).all()  # ...smoothly
    assert torch.equal(out_mask[0] > 0.5, torch.from_numpy(mask))


def test_resolution_loss_removes_fine_detail_only() -> None:
    config = {"input_size": 128, "normalize": "unit",
              "augment": {"resolution": {"scale": [0.25, 0.25], "p": 1.0}}}
    pixels = speckled((128, 128))
    sharp = to_model_input(pixels, {"input_size": 128, "normalize": "unit"})[0]
    coarse = build_transform(config, train=True)(pixels)[0][0]
    assert _detail(coarse) < 0.5 * _detail(sharp)
    assert abs(float(coarse.mean() - sharp.mean())) < 0.02


def _detail(image: torch.Tensor) -> float:
    """Mean absolute difference of vertical neighbours: high for speckle, low once blurred."""
    return float((image[1:, :] - image[:-1, :]).abs().mean())
