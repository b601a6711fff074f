"""A standard U-Net baseline (Ronneberger et al., MICCAI 2015) with batch-norm and same padding.

``norm="group"`` swaps batch-norm for group norm (8 groups), which does not depend on how a
batch is split: the choice for tiny per-GPU batches, where batch statistics are noise.

Widths double at each of `depth` max-pool downsamplings; 2x2 transposed convs upsample and the
decoder pads to the skip's size, so inputs need not be divisible by 2**depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonocad.errors import SonocadError
from sonocad.models.registry import SegmentationOutput, register_model

NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(8, channels)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv, norm, ReLU layers (conv bias is redundant before a norm)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample by a 2x2 transposed conv (halving channels), concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        # Floor pooling loses a row/column on odd sizes; pad back to the skip's size.
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 32,
                 depth: int = 4, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise SonocadError(f"unet norm must be one of {', '.join(NORMS)}, not {norm!r}")
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm)
                                  for i in range(depth))
        self.up = nn.ModuleList(UpBlock(widths[i + 1], widths[i], norm) for i in range(depth))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> SegmentationOutput:
        h = self.stem(x)
        skips = []
        for block in self.down:
            skips.append(h)
            h = block(self.pool(h))
        for skip, block in zip(reversed(skips), reversed(self.up)):
            h = block(h, skip)
        return {"out": self.head(h), "aux": []}


@register_model("unet", task="segmentation")
def unet(num_classes: int = 1, base_width: int = 32, depth: int = 4, norm: str = "batch") -> UNet:
    """U-Net with `depth` downsamplings and `base_width` channels at full resolution."""
    return UNet(num_classes=num_classes, base_width=base_width, depth=depth, norm=norm)
