"""Lesion instances from a lesion mask: each connected region is one instance.

Detection models (Mask R-CNN) need one box and one mask per lesion, while the datasets hold one
binary mask per image. Regions are 8-connected, so pixels touching at a corner stay one lesion.
Specks smaller than `MIN_INSTANCE_FRACTION` of the image are dropped: BUSI masks carry dozens of
1-3 pixel strays from the drawing tool, which would otherwise become lesions no one can find.

Boxes are (x0, y0, x1, y1) on pixel edges: a region covering columns 3..5 spans x 3 to 6, so a
one-pixel region still has a box of positive width (torchvision rejects empty boxes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sonocad.errors import SonocadError

MIN_INSTANCE_FRACTION = 1e-4  # of the image area: 25 px of a 500 x 500 BUSI image
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Instances:
    masks: np.ndarray  # bool (N, H, W)
    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1 in pixels (edges)

    def __len__(self) -> int:
        return len(self.masks)


def mask_instances(mask: np.ndarray,
                   min_fraction: float = MIN_INSTANCE_FRACTION) -> Instances:
    """The connected lesions of a (H, W) mask, largest first; none for an empty mask."""
    binary = np.asarray(mask, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {binary.shape}")
    labelled, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    keep = [i + 1 for i in np.argsort(-areas, kind="stable")
            if areas[i] >= min_fraction * binary.size]
    slices = ndimage.find_objects(labelled)
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop)
             for s in (slices[i - 1] for i in keep)]
    masks = (labelled[None] == np.asarray(keep, dtype=labelled.dtype)[:, None, None]
             if keep else np.zeros((0, *binary.shape), dtype=bool))
    return Instances(masks, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def class_instances(mask: np.ndarray, label: str | None, class_names: list[str],
                    image_id: str) -> tuple[Instances, np.ndarray]:
    """The instances of an image's mask and their class indices in `class_names` (index 0 is
    the background): every lesion of an image takes the image's class."""
    instances = mask_instances(mask)
    if len(instances) and label not in class_names[1:]:
        raise SonocadError(f"{image_id}: has a lesion but its label {label!r} is not a class "
                           f"the detector learns ({', '.join(class_names[1:])})")
    index = class_names.index(label) if len(instances) else 0
    return instances, np.full(len(instances), index, dtype=np.int64)
