"""The one record every dataset adapter yields and every pipeline stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sonocad.io.images import Image


class MaskFormat(str, Enum):
    """How a sample's annotation files encode the lesion."""

    BINARY = "binary"  # any non-zero pixel is lesion; several files are OR-merged
    VOC = "voc"  # Pascal VOC class-index PNG; 0 background, 255 void border
    LABELME = "labelme"  # Labelme JSON polygons, rectangles, points
    GEOJSON = "geojson"  # QuPath GeoJSON polygons in image pixel coordinates


# Class names in the order models see them; a dataset may use a subset.
CLASS_NAMES: tuple[str, ...] = ("normal", "benign", "malignant")


@dataclass(frozen=True)
class Sample:
    """One image and what is known about it. Pixels are read lazily by `load_image`/`load_mask`.

    `image_id` is stable across machines (the path relative to the dataset root, with `/`),
    so split files and predictions tables can name images portably.
    """

    image_id: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    mask_format: MaskFormat = MaskFormat.BINARY
    label: str | None = None
    patient_id: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column) in mm per pixel
    clinical: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the data set it came from ("busi", "busbra", a recipe's name)
    scanner: str | None = None  # the ultrasound system, where the data set says

    @property
    def group_id(self) -> str:
        """The unit that must not be split across train/val/test: the patient, else the image."""
        return self.patient_id or self.image_id

    def load_image(self) -> Image:
        from sonocad.io.images import read_image

        image = read_image(self.image_path)
        if self.pixel_spacing_mm is not None:
            image = image.with_spacing(self.pixel_spacing_mm)
        return image

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The lesion mask (bool, `shape`), or None when the sample has no annotation."""
        if not self.mask_paths:
            return None
        from sonocad.io.annotations import read_mask

        return read_mask(self.mask_paths, shape, self.mask_format)

