"""The one record every dataset adapter yields and every pipeline stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonocad.io.annotations import MaskFormat, read_mask
from sonocad.io.images import read_image
from sonocad.io.pixels import Image
from sonocad.io.spacing import resolve_spacing

# Class names in the order models see them; a dataset may use a subset.
CLASS_NAMES: tuple[str, ...] = ("normal", "benign", "malignant")
LESION_CLASSES = CLASS_NAMES[1:]  # the classes of an image with a lesion


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
        """The image, with its spacing by `resolve_spacing`: its file's own calibration first
        (a DICOM's), then the sample's (a manifest's)."""
        image = read_image(self.image_path)
        return image.with_spacing(resolve_spacing(image.spacing_mm, self.pixel_spacing_mm)[0])

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The lesion mask (bool, `shape`), or None when the sample has no annotation."""
        if not self.mask_paths:
            return None
        return read_mask(self.mask_paths, shape, self.mask_format)

