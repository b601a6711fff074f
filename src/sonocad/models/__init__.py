"""Models by name: `create_model(name, **kwargs)` is the one way in (see registry.py)."""

from sonocad.models import (  # noqa: F401  (registers the models)
    efficientnet_lite,
    ensemble,
    torchvision_models,
    u2net,
    unet,
)
from sonocad.models.registry import (
    SegmentationOutput,
    create_model,
    list_models,
    model_task,
    register_model,
)

__all__ = ["SegmentationOutput", "create_model", "list_models", "model_task", "register_model"]
