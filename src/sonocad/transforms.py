"""Preprocessing and augmentation: an ultrasound image (and its mask and boxes) to model input.

One `TransformConfig` (the recipe's ``transform`` section, stored in every checkpoint) drives
training, evaluation and inference, so a model always sees its images prepared the same way:

1. pixels to float in [0, 1] (uint8 / 255, uint16 / 65535); RGB to grey unless
   ``grayscale: false`` (B-mode is grey; colour in a frame is calipers, text or Doppler);
2. optional despeckling (median or Gaussian) and CLAHE, at the image's own resolution, with
   OpenCV on 8-bit grey levels (16-bit inputs are reduced to 8 bits only for these steps);
3. resize to ``input_size``: letterboxed (``keep_aspect: true``, the default, because lesion
   shape such as taller-than-wide is diagnostic) or stretched;
4. training only: the ``augment`` entries, geometric first (image, mask and boxes move
   together through torchvision.transforms.v2; masks use nearest neighbour), then pixel ones;
5. normalise and replicate grey to 3 channels so ImageNet-style models fit.

``zscore`` takes its mean and std from the image content before padding and augmentation, so
letterbox bars do not shift the statistics and brightness/contrast augmentations are not
normalised away. All randomness comes from torch's global generator: seed it to replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sonocad.errors import SonocadError
from sonocad.model_input import (
    DESPECKLE_FILTERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUMA,
    MIN_STD,
    NORMALIZATIONS,
    InputSpec,
    enhance,
    fit_geometry,
    to_unit_float,
)

__all__ = ["AUGMENTATIONS", "DESPECKLE_FILTERS", "IMAGENET_MEAN", "IMAGENET_STD", "LUMA",
           "NORMALIZATIONS", "SonoTransform", "TransformConfig", "build_transform",
           "fit_geometry", "restore_size", "to_model_input", "to_unit_float"]


class _RandomGamma(v2.Transform):
    """x ** gamma with gamma drawn uniformly from `gamma_range`."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gamma_range: Sequence[float]) -> None:
        super().__init__()
        low, high = (float(g) for g in gamma_range)
        if not 0 < low <= high:
            raise ValueError(f"range must be 0 < low <= high, got {list(gamma_range)}")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": float(torch.empty(()).uniform_(self.low, self.high))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.adjust_gamma(inpt, params["gamma"])


class _SpeckleNoise(v2.Transform):
    """Multiplicative noise x + x * n, n ~ N(0, std^2): speckle scales with echo strength."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, std: float) -> None:
        super().__init__()
        if not float(std) >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std = float(std)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        noisy = inpt * (1 + self.std * torch.randn_like(inpt))
        return tv_tensors.wrap(noisy.clamp_(0, 1), like=inpt)


class _DepthGain(v2.Transform):
    """A smooth random gain over depth (image rows), like another time-gain-compensation curve:
    linear between `knots` gains drawn from [1 - strength, 1 + strength], top to bottom."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, strength: float, knots: int) -> None:
        super().__init__()
        if not 0 <= float(strength) < 1 or int(knots) < 2:
            raise ValueError(f"need 0 <= strength < 1 and knots >= 2, got {strength}, {knots}")
        self.strength, self.knots = float(strength), int(knots)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gains": 1 + self.strength * (2 * torch.rand(self.knots) - 1)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height = inpt.shape[-2]
        curve = torch.nn.functional.interpolate(params["gains"].view(1, 1, -1), size=height,
                                                mode="linear", align_corners=True)
        return tv_tensors.wrap((inpt * curve.view(height, 1)).clamp_(0, 1), like=inpt)


class _ResolutionLoss(v2.Transform):
    """Down-sample by a factor from `scale`, then back up: a coarser probe or older scanner."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, scale: Sequence[float]) -> None:
        super().__init__()
        low, high = (float(v) for v in scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must be 0 < low <= high <= 1, got {list(scale)}")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"factor": float(torch.empty(()).uniform_(self.low, self.high))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = list(inpt.shape[-2:])
        small = [max(1, round(n * params["factor"])) for n in size]
        coarse = F.resize(inpt, small, interpolation=_BILINEAR, antialias=True)
        return tv_tensors.wrap(F.resize(coarse, size, interpolation=_BILINEAR,
                                        antialias=False).clamp_(0, 1), like=inpt)


@dataclass(frozen=True)
class _Augmentation:
    defaults: dict[str, Any]  # every parameter but `p`
    build: Callable[..., v2.Transform]


_BILINEAR = v2.InterpolationMode.BILINEAR
# Applied in this order whatever the recipe's order: geometric, then pixel transforms.
AUGMENTATIONS: dict[str, _Augmentation] = {
    "hflip": _Augmentation({}, lambda: v2.RandomHorizontalFlip(p=1.0)),
    "vflip": _Augmentation({}, lambda: v2.RandomVerticalFlip(p=1.0)),
    "rotation": _Augmentation(
        {"degrees": 15.0},
        lambda degrees: v2.RandomRotation(degrees, interpolation=_BILINEAR)),
    "affine": _Augmentation(
        {"scale": [0.9, 1.1], "translate": [0.1, 0.1]},
        lambda scale, translate: v2.RandomAffine(0, translate=translate, scale=scale,
                                                 interpolation=_BILINEAR)),
    "brightness": _Augmentation({"factor": 0.2}, lambda factor: v2.ColorJitter(brightness=factor)),
    "contrast": _Augmentation({"factor": 0.2}, lambda factor: v2.ColorJitter(contrast=factor)),
    "gamma": _Augmentation({"range": [0.7, 1.5]},
                           lambda range: _RandomGamma(range)),  # `range`: the YAML key
    # Saturation and hue change nothing on grey images; they are here for grayscale: false.
    "color_jitter": _Augmentation(
        {"brightness": 0.2, "contrast": 0.2, "saturation": 0.0, "hue": 0.0}, v2.ColorJitter),
    "depth_gain": _Augmentation({"strength": 0.3, "knots": 4}, _DepthGain),
    "resolution": _Augmentation({"scale": [0.4, 1.0]}, _ResolutionLoss),
    "gaussian_blur": _Augmentation({"kernel_size": 5, "sigma": [0.1, 2.0]}, v2.GaussianBlur),
    "speckle": _Augmentation({"std": 0.1}, _SpeckleNoise),
}
DEFAULT_P = 0.5


@dataclass
class TransformConfig(InputSpec):
    """How images become model input; the recipe's ``transform`` section: the inference half
    (`sonocad.model_input.InputSpec`) and `augment`, which maps names from `AUGMENTATIONS` to
    their parameters and probability ``p`` (default 0.5); ``true`` takes the defaults and
    ``null``/``false`` leaves the augmentation out."""

    augment: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.augment = _normalize_augment(self.augment)


def _normalize_augment(augment: Any) -> dict[str, dict[str, Any]]:
    """Fill defaults, drop disabled entries, check names and parameters by building each."""
    if augment is None:
        return {}
    if not isinstance(augment, Mapping):
        raise SonocadError("transform augment must be a mapping of name -> parameters")
    out: dict[str, dict[str, Any]] = {}
    for name, params in augment.items():
        if name not in AUGMENTATIONS:
            raise SonocadError(f"unknown transform key 'augment.{name}' "
                               f"(known: {', '.join(AUGMENTATIONS)})")
        if params is None or params is False:
            continue
        params = {} if params is True else params
        if not isinstance(params, Mapping):
            raise SonocadError(f"transform augment.{name} must be true, null or a mapping")
        spec = AUGMENTATIONS[name]
        unknown = sorted(set(params) - set(spec.defaults) - {"p"})
        if unknown:
            raise SonocadError(f"unknown transform key 'augment.{name}.{unknown[0]}' "
                               f"(known: {', '.join([*spec.defaults, 'p'])})")
        full = {"p": DEFAULT_P, **spec.defaults, **params}
        # Tuples from Python code become lists, as YAML gives them, so configs compare equal.
        full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
        _build_augmentation(name, full)
        out[name] = full
    return out


def _build_augmentation(name: str, params: dict[str, Any]) -> v2.Transform:
    args = {k: v for k, v in params.items() if k != "p"}
    p = params["p"]
    try:
        if not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        return v2.RandomApply([AUGMENTATIONS[name].build(**args)], p=float(p))
    except (TypeError, ValueError) as exc:
        raise SonocadError(f"transform augment.{name}: {exc}") from None


class _Letterbox(v2.Transform):
    """Resize into `size` (keeping the aspect ratio and padding with black, or stretching)."""

    def __init__(self, size: tuple[int, int], keep_aspect: bool) -> None:
        super().__init__()
        self.size, self.keep_aspect = size, keep_aspect

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        (h, w), (top, left) = fit_geometry(image.shape[-2:], self.size, self.keep_aspect)
        bottom, right = self.size[0] - h - top, self.size[1] - w - left
        return {"size": [h, w], "padding": [left, top, right, bottom]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Plain NEAREST (torchvision's mask default) samples pixel corners and shifts masks by
        # up to half a pixel against the image; NEAREST_EXACT samples centres, as bilinear does.
        mode = (v2.InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask)
                else _BILINEAR)
        resized = self._call_kernel(F.resize, inpt, params["size"], interpolation=mode,
                                    antialias=True)
        return self._call_kernel(F.pad, resized, params["padding"], fill=0)


class SonoTransform:
    """``transform(pixels, mask=None, boxes=None)`` -> ``(image, mask)`` or, with boxes,
    ``(image, mask, boxes)``.

    image: float32 (3, H, W). mask: float32 (1, H, W) in {0, 1}, or None without a mask.
    boxes: float32 (N, 4) xyxy pixels of the output, clamped to it; none is dropped, so they
    stay aligned with their labels. Picklable, for DataLoader workers.
    """

    def __init__(self, config: TransformConfig, *, train: bool) -> None:
        self.config = config
        self.letterbox = _Letterbox(config.size, config.keep_aspect)
        augment = [_build_augmentation(name, config.augment[name])
                   for name in AUGMENTATIONS if train and name in config.augment]
        self.augment = v2.Compose(augment) if augment else v2.Identity()

    def __call__(self, pixels: np.ndarray, mask: np.ndarray | None = None,
                 boxes: np.ndarray | Sequence[Sequence[float]] | None = None
                 ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
        cfg = self.config
        array = to_unit_float(pixels, grayscale=cfg.grayscale)
        if cfg.despeckle or cfg.clahe:
            array = enhance(array, cfg)
        height, width = array.shape[-2:]
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(array)))
        mask_in = None if mask is None else _as_mask(mask, (height, width))
        boxes_in = None if boxes is None else tv_tensors.BoundingBoxes(
            torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            format="XYXY", canvas_size=(height, width), clamping_mode="hard")
        sample = self.letterbox(image, mask_in, boxes_in)
        stats = None
        if cfg.normalize == "zscore":
            (h, w), (top, left) = fit_geometry((height, width), cfg.size, cfg.keep_aspect)
            stats = _mean_std(sample[0][:, top:top + h, left:left + w])
        image, mask_out, boxes_out = self.augment(*sample)
        image = image.as_subclass(Tensor)
        if image.shape[0] == 1:
            image = image.repeat(3, 1, 1)
        image = _normalize(image, cfg.normalize, stats)
        if mask_out is not None:
            mask_out = mask_out.as_subclass(Tensor).float()
        if boxes_out is None:
            return image, mask_out
        return image, mask_out, boxes_out.as_subclass(Tensor).float()


def _as_mask(mask: np.ndarray, shape: tuple[int, int]) -> tv_tensors.Mask:
    if mask.shape != shape:
        raise SonocadError(f"mask shape {mask.shape} does not match image shape {shape}")
    # uint8: the nearest-neighbour kernels do not take bool.
    return tv_tensors.Mask(torch.from_numpy(np.asarray(mask, dtype=bool)).to(torch.uint8)[None])


def _mean_std(image: Tensor) -> tuple[float, float]:
    std, mean = torch.std_mean(image)
    return float(mean), max(float(std), MIN_STD)


def _normalize(image: Tensor, mode: str, stats: tuple[float, float] | None) -> Tensor:
    if mode == "zscore":
        mean, std = stats
        return (image - mean) / std
    if mode == "imagenet":
        return F.normalize(image, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return image


def _as_config(config: TransformConfig | Mapping[str, Any]) -> TransformConfig:
    return config if isinstance(config, TransformConfig) else TransformConfig.from_dict(config)


def build_transform(config: TransformConfig | Mapping[str, Any], *, train: bool) -> SonoTransform:
    """The transform for training (with augmentation) or evaluation (deterministic only)."""
    return SonoTransform(_as_config(config), train=train)


def to_model_input(pixels: np.ndarray, config: TransformConfig | Mapping[str, Any]) -> Tensor:
    """Inference preprocessing: pixels -> float32 (3, H, W), exactly as in evaluation."""
    image, _ = build_transform(config, train=False)(pixels)
    return image


def restore_size(output: Tensor, shape: Sequence[int],
                 config: TransformConfig | Mapping[str, Any]) -> Tensor:
    """Map a model-size output (..., H, W) (logits, probabilities) back onto the original
    image of `shape` (H, W): drop the letterbox bars and resize bilinearly."""
    cfg = _as_config(config)
    (h, w), (top, left) = fit_geometry(shape, cfg.size, cfg.keep_aspect)
    content = output[..., top:top + h, left:left + w]
    return F.resize(content, [int(shape[0]), int(shape[1])], antialias=True)
