"""One image through the model: the numbers the page shows and the pictures it draws.

Measurements and pictures are the ones `sonocad predict` writes (`sonocad.predictions`'
lesion columns, `sonocad.pictures`), so the viewer and the batch command agree on every image.
An outline from boxes a person drew (`sonocad.serve.boxes`) is described the same way
(`describe`), with ``outline_source`` "box" and its ``boxes``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage

from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.pixels import Image
from sonocad.pictures import heat_label, heatmap_picture, overlay_picture
from sonocad.predictions import Prediction, prediction_record

if TYPE_CHECKING:  # the explainer needs torch: imported by the app only for a checkpoint
    from sonocad.explain.runner import Explainer


# The keys of every summary, whatever the model: a classifier's has no lesion, a segmenter no
# class, and the page reads None as "does not apply".
SUMMARY_FIELDS = (
    "width", "height", "pixel_spacing_mm", "task", "class_probabilities", "predicted_class",
    "final_class", "decision_reason", "uncertainty", "low_confidence", "p_malignant", "rule_out",
    "lesion_detected", "lesion_count", "lesion_region", "lesion_area_px", "lesion_area_mm2",
    "lesion_diameter_px", "lesion_diameter_mm", "lesion_perpendicular_px",
    "lesion_perpendicular_mm", "lesions", "outline_source", "boxes", "scan_area")


@dataclass(frozen=True)
class Analysis:
    summary: dict[str, Any]  # JSON-ready; None where a value does not apply or is unknown
    # "overlay" (always), "heatmap" (when there is one) and "mask" (with a lesion map), PNG
    images: dict[str, bytes]

    @property
    def size(self) -> int:
        """Bytes of its pictures: what keeping them costs the result store."""
        return sum(len(data) for data in self.images.values())


def analyse(predictor: Predictor, image: Image, explainer: Explainer | None = None) -> Analysis:
    """`explainer` gives a classifier its Grad-CAM heatmap; without it a classifier has none."""
    (prediction,) = predictor.predict_images([image])
    if isinstance(prediction, NonFiniteOutput):
        raise prediction
    return describe(predictor, image, prediction, explainer)


def describe(predictor: Predictor, image: Image, prediction: Prediction,
             explainer: Explainer | None = None, *, from_boxes: bool = False) -> Analysis:
    """The summary and pictures of `prediction`; `from_boxes`: its lesion map is the outline
    of boxes a person drew (none: "no lesion", in their word)."""
    # Every key always present (None: does not apply), then the prediction's own record.
    summary: dict[str, Any] = {
        **dict.fromkeys(SUMMARY_FIELDS),
        "width": image.width, "height": image.height,
        "pixel_spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
        "task": predictor.task.name, "predicted_class": prediction.predicted_class,
        "final_class": prediction.final_class,
        **prediction_record(prediction, image.spacing_mm)}
    images = {"overlay": _png(overlay_picture(image.pixels, prediction, image.spacing_mm))}
    mask = prediction.mask
    if mask is None:  # a classifier: the overlay has only its caption
        if explainer is not None:
            heat = explainer(image.pixels, prediction).heat
            images["heatmap"] = _png(heatmap_picture(image.pixels, heat, heat_label(prediction)))
        return Analysis(summary, images)
    if from_boxes:  # boxes a person drew, none among them: "no lesion" is theirs too
        summary["outline_source"] = "box"
    images["heatmap"] = _png(heatmap_picture(image.pixels, prediction.lesion_probability,
                                             heat_label(prediction)))
    images["mask"] = _png(mask.astype(np.uint8) * 255)  # 0/255, as predict's masks/
    return Analysis(summary, images)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: these go over loopback or a LAN, and encoding is on every request.
    PILImage.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
