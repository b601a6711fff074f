"""What a model sees at inference, in numpy and Pillow only: no torch, so the ONNX back end
starts in a fraction of a second.

`InputSpec` is the inference half of a recipe's ``transform`` section (stored in every
checkpoint; `sonocad.transforms.TransformConfig` adds the training augmentations). For an image:

1. pixels to float in [0, 1] (uint8 / 255, uint16 / 65535); RGB to grey unless
   ``grayscale: false``;
2. optional despeckling (median or Gaussian) and CLAHE, at the image's own resolution, with
   OpenCV on 8-bit grey levels;
3. resize to ``input_size``: letterboxed (``keep_aspect``) or stretched; bilinear with Pillow's
   antialiasing, which torchvision's antialiased resize reproduces (equal to 1e-5 of the
   range: tests/test_model_input.py);
4. replicate grey to 3 channels and normalise (z-score with the image content's statistics,
   not the letterbox bars'; ImageNet; or none).

`restore_size` maps a model-size output back onto the image: letterbox bars dropped, bilinear.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from sonocad.errors import SonocadError

NORMALIZATIONS = ("zscore", "imagenet", "unit")
DESPECKLE_FILTERS = ("median", "gaussian")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, as PIL's "L" mode and torchvision's rgb_to_grayscale.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A spread below one 8-bit grey level is a flat image: do not blow its noise up to unit std.
MIN_STD = 1.0 / 255
# Recipe keys of the transform section that only training reads (`TransformConfig`).
TRAINING_KEYS = frozenset({"augment"})


@dataclass
class InputSpec:
    """How images become model input. `input_size` is an int (square) or (height, width);
    `despeckle_size` is the filter width in pixels of the original image; `clahe_tiles` is
    tiles per side."""

    input_size: int | tuple[int, int] = 256
    grayscale: bool = True
    normalize: str = "zscore"
    despeckle: str | None = None
    despeckle_size: int = 5
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    keep_aspect: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.input_size, Sequence) and not isinstance(self.input_size, str):
            self.input_size = tuple(self.input_size)
        size = (self.input_size,) * 2 if isinstance(self.input_size, int) else self.input_size
        if not isinstance(size, tuple) or len(size) != 2 or not all(
                isinstance(s, int) and s > 0 for s in size):
            raise SonocadError(f"transform input_size must be a positive int or [height, width], "
                               f"got {self.input_size!r}")
        for name in ("grayscale", "clahe", "keep_aspect"):
            if not isinstance(getattr(self, name), bool):
                raise SonocadError(f"transform {name} must be true or false")
        _check_choice("normalize", self.normalize, NORMALIZATIONS)
        if self.despeckle is not None:
            _check_choice("despeckle", self.despeckle, DESPECKLE_FILTERS)
        if not (isinstance(self.despeckle_size, int) and self.despeckle_size >= 3
                and self.despeckle_size % 2):
            raise SonocadError("transform despeckle_size must be an odd int >= 3, got "
                               f"{self.despeckle_size!r}")
        if not (isinstance(self.clahe_clip_limit, (int, float)) and self.clahe_clip_limit > 0
                and isinstance(self.clahe_tiles, int) and self.clahe_tiles > 0):
            raise SonocadError("transform clahe_clip_limit and clahe_tiles must be positive")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        size = self.input_size
        return (size, size) if isinstance(size, int) else size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):  # -> the class it is called on
        """A config from a recipe section or a checkpoint; unknown keys are errors (the
        training-only keys are left to the classes that hold them)."""
        if not isinstance(d, Mapping):
            raise SonocadError(f"the transform section must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - TRAINING_KEYS)
        if unknown:
            raise SonocadError(f"unknown transform key(s): {', '.join(map(str, unknown))} "
                               f"(known: {', '.join(sorted(known | TRAINING_KEYS))})")
        return cls(**{key: value for key, value in d.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data for the checkpoint."""
        d = dataclasses.asdict(self)
        if isinstance(self.input_size, tuple):
            d["input_size"] = list(self.input_size)
        return d


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SonocadError(f"transform {name} must be one of {', '.join(choices)}, got {value!r}")


def fit_geometry(shape: Sequence[int], size: tuple[int, int],
                 keep_aspect: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where an image of `shape` (H, W) lands in the model input: ((h, w), (top, left))."""
    height, width = int(shape[0]), int(shape[1])
    if not keep_aspect:
        return size, (0, 0)
    scale = min(size[0] / height, size[1] / width)
    h = min(size[0], max(1, round(height * scale)))
    w = min(size[1], max(1, round(width * scale)))
    return (h, w), ((size[0] - h) // 2, (size[1] - w) // 2)


def to_unit_float(pixels: np.ndarray, *, grayscale: bool = True) -> np.ndarray:
    """uint8/uint16 (H, W) or (H, W, 3) pixels as float32 (C, H, W) in [0, 1], C = 1 or 3."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(pixels.dtype)
    if scale is None:
        raise SonocadError(f"image pixels must be uint8 or uint16, got {pixels.dtype}")
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise SonocadError(f"image pixels must be (H, W) or (H, W, 3), got {pixels.shape}")
    array = pixels.astype(np.float32) / np.float32(scale)
    if array.ndim == 2:
        return array[None]
    if grayscale:
        return (array @ LUMA)[None]
    return array.transpose(2, 0, 1)


def enhance(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Despeckle, then CLAHE, on (C, H, W) float in [0, 1]; each channel on its own."""
    import cv2  # a 200 ms import that only these options need

    # OpenCV's median filter (beyond 5 px) and CLAHE work on 8-bit grey levels.
    channels = list(np.rint(array * 255).astype(np.uint8))
    k = spec.despeckle_size
    if spec.despeckle == "median":
        channels = [cv2.medianBlur(c, k) for c in channels]
    elif spec.despeckle == "gaussian":
        channels = [cv2.GaussianBlur(c, (k, k), 0) for c in channels]  # sigma from k
    if spec.clahe:
        # Made per call: OpenCV objects do not pickle into DataLoader workers.
        tiles = (spec.clahe_tiles, spec.clahe_tiles)
        clahe = cv2.createCLAHE(clipLimit=spec.clahe_clip_limit, tileGridSize=tiles)
        channels = [clahe.apply(c) for c in channels]
    return np.stack(channels).astype(np.float32) / np.float32(255)


def model_input(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Inference preprocessing: pixels -> float32 (3, H, W), as the evaluation transform."""
    array = to_unit_float(pixels, grayscale=spec.grayscale)
    if spec.despeckle or spec.clahe:
        array = enhance(array, spec)
    (h, w), (top, left) = fit_geometry(array.shape[-2:], spec.size, spec.keep_aspect)
    content = np.stack([_resized(channel, (h, w)) for channel in array])
    frame = np.zeros((len(content), *spec.size), np.float32)  # black letterbox bars
    frame[:, top:top + h, left:left + w] = content
    if len(frame) == 1:
        frame = np.repeat(frame, 3, axis=0)
    if spec.normalize == "zscore":
        # Statistics of the content, not the bars (torch.std_mean's std: Bessel-corrected);
        # applied to the whole frame, bars included, as in training.
        mean, std = float(content.mean()), max(float(content.std(ddof=1)), MIN_STD)
        frame = (frame - np.float32(mean)) / np.float32(std)
    elif spec.normalize == "imagenet":
        frame = ((frame - np.array(IMAGENET_MEAN, np.float32)[:, None, None])
                 / np.array(IMAGENET_STD, np.float32)[:, None, None])
    return frame


def restore_size(output: np.ndarray, shape: Sequence[int], spec: InputSpec) -> np.ndarray:
    """A model-size output (H, W) (logits, probabilities) on the original image of `shape`
    (H, W): the letterbox bars dropped, resized bilinearly."""
    (h, w), (top, left) = fit_geometry(shape, spec.size, spec.keep_aspect)
    return _resized(output[top:top + h, left:left + w], (int(shape[0]), int(shape[1])))


def _resized(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) to `size` (rows, cols): Pillow's bilinear, antialiased when shrinking."""
    if channel.shape == size:
        return np.asarray(channel, np.float32)
    image = PILImage.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
    return np.asarray(image.resize((size[1], size[0]), PILImage.Resampling.BILINEAR))
