"""Grad-CAM (Selvaraju et al., ICCV 2017) and Grad-CAM++ (Chattopadhay et al., WACV 2018).

Hand-written (one forward hook and `torch.autograd.grad`) rather than taken from the
pytorch-grad-cam package: the method is a few lines, and the dependency would bring more than
it saves. The explained model is left as it was: no hook stays registered, no parameter
gradient is accumulated, every module's train/eval mode is restored.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet

from sonocad.errors import SonocadError

Method = Literal["gradcam", "gradcam++"]
METHODS: tuple[str, ...] = get_args(Method)


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block: ``layer4`` of a ResNet/ResNeXt, else the last Conv2d
    (for AlexNet, the last convolution in ``features``)."""
    if isinstance(model, ResNet):
        return model.layer4  # the block output, after the residual sum and its ReLU
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise SonocadError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; "
                           "pass the layer to explain")
    return convolutions[-1]


def grad_cam(model: nn.Module, image: Tensor, *, target_class: int | None = None,
             layer: nn.Module | str | None = None, method: Method = "gradcam") -> np.ndarray:
    """Class activation map of `model` (a classifier returning logits (1, K)) for `image`
    (1, 3, H, W), as float32 (H, W) in [0, 1] (1 at the strongest evidence).

    `target_class` defaults to the predicted class; `layer` (a module or its dotted name in
    `model`) to `default_target_layer`. The model runs in eval mode.
    """
    if method not in METHODS:
        raise SonocadError(f"unknown explanation method {method!r} "
                           f"(choose from {', '.join(METHODS)})")
    if image.ndim != 4 or image.shape[0] != 1:
        raise SonocadError(f"grad_cam takes one image as (1, C, H, W), got {tuple(image.shape)}")
    # The whole graph is built and used inside enable_grad: a caller may be under no_grad.
    with torch.enable_grad():
        activations, logits = _forward(model, image, _resolve_layer(model, layer))
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise SonocadError("grad_cam explains classifiers: the model must return "
                               "logits (1, K)")
        if target_class is None:
            target_class = int(logits[0].argmax())
        if not 0 <= target_class < logits.shape[1]:
            raise SonocadError(f"target class {target_class} is out of range "
                               f"(0..{logits.shape[1] - 1})")
        # autograd.grad returns the gradient without accumulating into any parameter's .grad.
        (gradients,) = torch.autograd.grad(logits[0, target_class], activations)
    activations = activations.detach()
    weights = _channel_weights(activations, gradients, method)
    cam = F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu().numpy().astype(np.float32)


def _resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if layer is None:
        return default_target_layer(model)
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise SonocadError(f"{type(model).__name__} has no layer {layer!r}") from None
    return layer


def _forward(model: nn.Module, image: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """(the layer's output, the logits) from one eval-mode forward pass."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        # The input asks for gradients, so the graph exists even when every weight is frozen.
        logits = model(image.detach().clone().requires_grad_(True))
    finally:
        handle.remove()
        for module, training in modes.items():
            module.train(training)
    if not captured:
        raise SonocadError(f"layer {type(layer).__name__} did not run in the forward pass")
    # The last call counts, should the layer run more than once. An in-place activation after
    # it (AlexNet's ReLU) rectifies the captured map, and autograd follows that consistently.
    activations = captured[-1]
    if not isinstance(activations, Tensor) or activations.ndim != 4:
        raise SonocadError(f"layer {type(layer).__name__} must output a (N, C, H, W) tensor")
    return activations, logits


def _channel_weights(activations: Tensor, gradients: Tensor, method: Method) -> Tensor:
    """(1, C) importance of each channel of the layer for the target score."""
    if method == "gradcam":
        return gradients.mean(dim=(2, 3))
    # Grad-CAM++ with exp(score) so the higher-order derivatives are powers of the gradient
    # (the paper's eq. 19); alpha is 0 where the gradient is.
    squared, cubed = gradients**2, gradients**3
    denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * cubed
    alpha = torch.where(denominator != 0, squared / denominator.where(denominator != 0, 1.0), 0.0)
    return (alpha * F.relu(gradients)).sum(dim=(2, 3))
