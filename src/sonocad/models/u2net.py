"""U2-Net (Qin et al., Pattern Recognition 2020): a U-Net whose stages are small U-Nets.

Each stage is a residual U-block (RSU): an input conv, a U of `height` levels, and a residual
add. The outer U has six encoder stages and five decoder stages; every decoder stage and the
deepest encoder stage emit a side map, and a 1x1 conv fuses the six maps (deep supervision).
Pooling uses ceil mode and every upsampling resizes to the skip's size, so any input size works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonocad.models.registry import SegmentationOutput, register_model


class RSUSpec(NamedTuple):
    height: int
    in_channels: int
    mid_channels: int
    out_channels: int
    dilated: bool = False  # RSU-4F: dilations replace pooling at the coarsest stages


class ConvBnRelu(nn.Sequential):
    """3x3 conv (padding = dilation keeps the size), batch-norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _resize_like(x: Tensor, reference: Tensor) -> Tensor:
    # Resizing to the reference's size (not by x2) is what lets odd sizes through.
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block RSU-L (or RSU-LF when `dilated`): a U of `height` levels plus a residual.

    Levels 1..L-1 are encoder convs (pooled between levels, or at growing dilation when
    dilated) and level L is a dilated bottom conv without pooling; decoder convs mirror levels
    L-1..1 on the concatenation of the coarser map and the skip.
    """

    def __init__(self, spec: RSUSpec) -> None:
        super().__init__()
        height, in_ch, mid_ch, out_ch, dilated = spec
        dilations = [2**level if dilated else 1 for level in range(height - 1)]
        self.conv_in = ConvBnRelu(in_ch, out_ch)
        self.encoder = nn.ModuleList(
            ConvBnRelu(out_ch if level == 0 else mid_ch, mid_ch, d)
            for level, d in enumerate(dilations))
        self.bottom = ConvBnRelu(mid_ch, mid_ch, 2 ** (height - 1) if dilated else 2)
        self.decoder = nn.ModuleList(
            ConvBnRelu(2 * mid_ch, out_ch if level == 0 else mid_ch, d)
            for level, d in enumerate(dilations))
        self.pool = nn.Identity() if dilated else nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv_in(x)
        h, skips = residual, []
        for level, conv in enumerate(self.encoder):
            h = conv(h if level == 0 else self.pool(h))
            skips.append(h)
        h = self.bottom(h)
        for skip, conv in zip(reversed(skips), reversed(self.decoder)):
            h = conv(torch.cat([_resize_like(h, skip), skip], dim=1))
        return h + residual


class U2Net(nn.Module):
    """The nested U: `encoder` stages 1..6 and `decoder` stages 1..5 (stage i pairs with
    encoder stage i); returns the fused map as "out" and the six side maps (finest first)
    as "aux", all logits at the input resolution."""

    def __init__(self, encoder: Sequence[RSUSpec], decoder: Sequence[RSUSpec],
                 num_classes: int = 1) -> None:
        super().__init__()
        if len(decoder) != len(encoder) - 1:
            raise ValueError("U2Net needs one decoder stage fewer than encoder stages")
        self.encoder = nn.ModuleList(RSU(spec) for spec in encoder)
        self.decoder = nn.ModuleList(RSU(spec) for spec in decoder)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        side_channels = [spec.out_channels for spec in decoder] + [encoder[-1].out_channels]
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in side_channels)
        self.fuse = nn.Conv2d(len(side_channels) * num_classes, num_classes, 1)

    def forward(self, x: Tensor) -> SegmentationOutput:
        h, skips = x, []
        for stage_index, stage in enumerate(self.encoder):
            h = stage(h if stage_index == 0 else self.pool(h))
            skips.append(h)
        features = [h]
        for skip, stage in zip(reversed(skips[:-1]), reversed(self.decoder)):
            h = stage(torch.cat([_resize_like(h, skip), skip], dim=1))
            features.append(h)
        features.reverse()  # finest first, matching self.sides
        sides = [_resize_like(side(f), x) for side, f in zip(self.sides, features)]
        return {"out": self.fuse(torch.cat(sides, dim=1)), "aux": sides}


# Stage tables from the paper (Table 1 / Fig. 2): (height, in, mid, out, dilated).
_U2NET_ENCODER = (RSUSpec(7, 3, 32, 64), RSUSpec(6, 64, 32, 128), RSUSpec(5, 128, 64, 256),
                  RSUSpec(4, 256, 128, 512), RSUSpec(4, 512, 256, 512, True),
                  RSUSpec(4, 512, 256, 512, True))
_U2NET_DECODER = (RSUSpec(7, 128, 16, 64), RSUSpec(6, 256, 32, 64), RSUSpec(5, 512, 64, 128),
                  RSUSpec(4, 1024, 128, 256), RSUSpec(4, 1024, 256, 512, True))
_U2NETP_ENCODER = (RSUSpec(7, 3, 16, 64), RSUSpec(6, 64, 16, 64), RSUSpec(5, 64, 16, 64),
                   RSUSpec(4, 64, 16, 64), RSUSpec(4, 64, 16, 64, True),
                   RSUSpec(4, 64, 16, 64, True))
_U2NETP_DECODER = (RSUSpec(7, 128, 16, 64), RSUSpec(6, 128, 16, 64), RSUSpec(5, 128, 16, 64),
                   RSUSpec(4, 128, 16, 64), RSUSpec(4, 128, 16, 64, True))


@register_model("u2net", task="segmentation")
def u2net(num_classes: int = 1) -> U2Net:
    """Full U2-Net (about 44 M parameters)."""
    return U2Net(_U2NET_ENCODER, _U2NET_DECODER, num_classes)


@register_model("u2net_lite", task="segmentation")
@register_model("u2netp", task="segmentation")
def u2netp(num_classes: int = 1) -> U2Net:
    """U2-Net-lite / U2-Netp: 16 mid and 64 out channels in every stage (about 1.13 M)."""
    return U2Net(_U2NETP_ENCODER, _U2NETP_DECODER, num_classes)
