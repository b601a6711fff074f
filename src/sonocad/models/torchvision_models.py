"""The papers' torchvision architectures, registered and adapted to the sonocad contracts.

`pretrained="imagenet"` loads torchvision's ImageNet-1k V1 weights (the ones the papers'
``pretrained=True`` meant) into the backbone; heads are always freshly initialised for
`num_classes`. With `pretrained=None` nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models import WeightsEnum, segmentation
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from sonocad.errors import SonocadError
from sonocad.models.registry import SegmentationOutput, register_model

IMAGENET = "imagenet"


def _imagenet(weights: WeightsEnum, pretrained: str | None) -> WeightsEnum | None:
    """`weights` when ImageNet weights were asked for (create_model has checked the tag)."""
    return weights if pretrained == IMAGENET else None


@contextmanager
def _fetching(weights: WeightsEnum | None) -> Iterator[None]:
    """Turn a failed weight download into one line that says how to proceed offline."""
    try:
        yield
    except OSError as exc:  # URLError, HTTPError, timeouts, unwritable cache
        if weights is None:
            raise
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        reason = " ".join(str(exc).split())
        raise SonocadError(
            f"could not fetch ImageNet weights {weights} ({reason}); download {weights.url} "
            f"to {cached}, or train without them (model.pretrained=none)") from exc


class TorchvisionSegmentation(nn.Module):
    """Maps torchvision's {"out": map, "aux": map} to {"out": map, "aux": [maps]}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> SegmentationOutput:
        outputs = self.model(x)
        return {"out": outputs["out"], "aux": [outputs["aux"]] if "aux" in outputs else []}


def _segmentation(build: Callable[..., nn.Module], num_classes: int, aux_loss: bool,
                  pretrained: str | None) -> TorchvisionSegmentation:
    backbone_weights = _imagenet(models.ResNet101_Weights.IMAGENET1K_V1, pretrained)
    with _fetching(backbone_weights):
        model = build(weights=None, weights_backbone=backbone_weights,
                      num_classes=num_classes, aux_loss=aux_loss)
    return TorchvisionSegmentation(model)


@register_model("fcn_resnet101", task="segmentation", pretrained=(IMAGENET,))
def fcn_resnet101(num_classes: int = 1, aux_loss: bool = True,
                  pretrained: str | None = None) -> TorchvisionSegmentation:
    """FCN with a dilated ResNet-101 backbone (JMIR 2026)."""
    return _segmentation(segmentation.fcn_resnet101, num_classes, aux_loss, pretrained)


@register_model("deeplabv3_resnet101", task="segmentation", pretrained=(IMAGENET,))
def deeplabv3_resnet101(num_classes: int = 1, aux_loss: bool = True,
                        pretrained: str | None = None) -> TorchvisionSegmentation:
    """DeepLabV3 with a dilated ResNet-101 backbone (JMIR 2026)."""
    return _segmentation(segmentation.deeplabv3_resnet101, num_classes, aux_loss, pretrained)


def _classifier(build: Callable[..., nn.Module], weights: WeightsEnum, num_classes: int,
                pretrained: str | None) -> nn.Module:
    chosen = _imagenet(weights, pretrained)
    with _fetching(chosen):
        model = build(weights=chosen)
    # ImageNet weights fix 1000 outputs, so the last linear layer is always replaced.
    name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.set_submodule(name, nn.Linear(head.in_features, num_classes))
    return model


@register_model("resnext50_32x4d", task="classification", pretrained=(IMAGENET,))
def resnext50_32x4d(num_classes: int = 3, pretrained: str | None = None) -> nn.Module:
    """ResNeXt-50 32x4d ("DeepCardinal-50", Front Oncol 2025)."""
    return _classifier(models.resnext50_32x4d, models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1,
                       num_classes, pretrained)


@register_model("resnet34", task="classification", pretrained=(IMAGENET,))
def resnet34(num_classes: int = 3, pretrained: str | None = None) -> nn.Module:
    return _classifier(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1,
                       num_classes, pretrained)


@register_model("resnet50", task="classification", pretrained=(IMAGENET,))
def resnet50(num_classes: int = 3, pretrained: str | None = None) -> nn.Module:
    return _classifier(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1,
                       num_classes, pretrained)


@register_model("alexnet", task="classification", pretrained=(IMAGENET,))
def alexnet(num_classes: int = 3, pretrained: str | None = None) -> nn.Module:
    return _classifier(models.alexnet, models.AlexNet_Weights.IMAGENET1K_V1,
                       num_classes, pretrained)


@register_model("maskrcnn_resnet101_fpn", task="detection", pretrained=(IMAGENET,))
def maskrcnn_resnet101_fpn(num_classes: int = 3, min_size: int = 1024, max_size: int = 1024,
                           detections_per_image: int = 10, test_proposals: int = 300,
                           pretrained: str | None = None) -> MaskRCNN:
    """Mask R-CNN, ResNet-101-FPN (QIMS 2023); classes include background (0).

    A breast scan holds one or two masses, not COCO's crowds: keeping 10 detections (not 100)
    and 300 proposals at test time (not 1000) makes CPU inference several times faster, and
    the mask head, which pastes a full-size mask per detection, far cheaper."""
    weights = _imagenet(models.ResNet101_Weights.IMAGENET1K_V1, pretrained)
    # As torchvision does: frozen batch-norm and early layers only when starting from ImageNet.
    with _fetching(weights):
        backbone = resnet_fpn_backbone(
            backbone_name="resnet101", weights=weights,
            norm_layer=FrozenBatchNorm2d if weights else nn.BatchNorm2d,
            trainable_layers=3 if weights else 5)
    return MaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size,
                    box_detections_per_img=detections_per_image,
                    rpn_pre_nms_top_n_test=test_proposals, rpn_post_nms_top_n_test=test_proposals)
