"""One image through the model: the numbers the page shows and the pictures it draws.

Measurements and pictures are the ones `sonocad predict` writes (`sonocad.predictions`'
lesion columns, `sonocad.pictures`), so the viewer and the batch command agree on every image.
An outline from boxes a person drew (`sonocad.serve.boxes`) is described the same way
(`describe`), with ``outline_source`` "box" and its ``boxes``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage

from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.pixels import Image
from sonocad.pictures import heat_label, heatmap_picture, overlay_picture
from sonocad.predictions import Prediction, detection_fields, lesion_columns, scan_area

if TYPE_CHECKING:  # the explainer needs torch: imported by the app only for a checkpoint
    from sonocad.explain.runner import Explainer


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
    summary: dict[str, Any] = {
        "width": image.width, "height": image.height,
        "pixel_spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
        "task": predictor.task.name,
        "class_probabilities": prediction.class_probabilities,
        "predicted_class": prediction.predicted_class,
        "final_class": prediction.final_class,
        "decision_reason": prediction.decision.reason if prediction.decision else None,
        "uncertainty": prediction.decision.uncertainty if prediction.decision else None,
        "low_confidence": prediction.decision.low_confidence if prediction.decision else None,
        "p_malignant": prediction.decision.p_malignant if prediction.decision else None,
        "rule_out": prediction.decision.rule_out if prediction.decision else None,
        "lesion_detected": None, "lesion_count": None, "lesion_region": None,
        "lesion_area_px": None,
        "lesion_area_mm2": None, "lesion_diameter_px": None, "lesion_diameter_mm": None,
        "lesion_perpendicular_px": None, "lesion_perpendicular_mm": None, "lesions": None,
        "outline_source": None, "boxes": None, "scan_area": None,
    }
    images = {"overlay": _png(overlay_picture(image.pixels, prediction, image.spacing_mm))}
    mask = prediction.mask
    if mask is None:  # a classifier: the overlay has only its caption
        if explainer is not None:
            heat = explainer(image.pixels, prediction).heat
            images["heatmap"] = _png(heatmap_picture(image.pixels, heat, heat_label(prediction)))
        return Analysis(summary, images)
    # The table's lesion columns (`sonocad.predictions`), as JSON: yes / no, whole pixels, no NaN.
    lesions = prediction.lesions(image.spacing_mm)
    lesion = lesion_columns(lesions)
    summary.update({key: _known(value) for key, value in lesion.items() if key != "lesions"},
                   lesion_detected=bool(lesion["lesion_detected"]),
                   lesion_area_px=int(lesion["lesion_area_px"]),
                   lesions=[found.record() for found in lesions],
                   outline_source="box" if from_boxes else "model",
                   scan_area=scan_area(prediction.regions),
                   boxes=[[round(value, 1) for value in box] for box in prediction.prompt_boxes])
    if prediction.instances is not None:
        summary.update(detection_fields(prediction.instances, prediction.top_scores or {},
                                        image.spacing_mm))
    images["heatmap"] = _png(heatmap_picture(image.pixels, prediction.lesion_probability,
                                             heat_label(prediction)))
    images["mask"] = _png(mask.astype(np.uint8) * 255)  # 0/255, as predict's masks/
    return Analysis(summary, images)


def _known(value: float | None) -> float | None:
    """NaN (no spacing, no lesion) as None: JSON has no NaN."""
    return None if value is None or math.isnan(value) else value


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: these go over loopback or a LAN, and encoding is on every request.
    PILImage.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
