"""`sonocad outline`: lesions outlined from boxes a person drew, measured and written as predict
writes them.

Each box is one lesion, outlined by LiteMedSAM (`sonocad.inference.box_prompt`); the image's
encoder runs once, each box costs only the decoder. The outline replaces the model's lesion map
in an otherwise ordinary prediction: the model (the bundled one unless another is given) still
gives the class probabilities, and its decision rule is applied to the drawn outline (a box says
"there is a lesion here", so the rule's presence test reads the human's outline). Outputs, in
`out` (claimed as `predict` claims its folder, `sonocad.io.outputs`):

  masks/<name>.png       the outline at the image's size, 0/255
  overlays/<name>.png    the image with the boxes (green), the outline (red) and each lesion's
                         two diameters, in mm where the spacing is known
  predictions.csv/.json  one row: predict's columns, plus ``outline_source`` ("box") and
                         ``boxes``
  dicom/<name>_seg.dcm, <name>_sr.dcm   with ``dicom_out``, for a single-frame DICOM input

Spacing: the file's own (DICOM) first, then `spacing_mm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.errors import InputError, SonocadError
from sonocad.extras import require
from sonocad.inference.decision import decide
from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.atomic import save_png
from sonocad.io.images import is_dicom, numbered_frames
from sonocad.io.outputs import claim_output_dir, output_stem
from sonocad.io.pixels import Image
from sonocad.io.spacing import resolve_spacing, spacing_text
from sonocad.pictures import overlay_picture
from sonocad.predictions import Prediction, prediction_columns, write_predictions

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels, x1/y1 exclusive


@dataclass(frozen=True)
class OutlineResult:
    out_dir: Path
    row: dict[str, Any]  # the predictions table's one row


def outline(image_path: str | Path, boxes: Sequence[Box],
            out: str | Path, *, checkpoint: str | Path | None = None,
            spacing_mm: tuple[float, float] | None = None, frame: int | None = None,
            dicom_out: bool = False, overwrite: bool = False) -> OutlineResult:
    """Outline each of `boxes` (x0, y0, x1, y1 in pixels) on `image_path` (its `frame`, from 1,
    for a cine loop; the first by default) and write mask, overlay, row and, with `dicom_out`,
    SEG and SR into `out`."""
    require("interactive")
    from sonocad.inference.box_prompt import BoxOutliner  # timm, segment-anything: on use

    path, out = Path(image_path), Path(out)
    if not boxes:
        raise SonocadError("outline needs at least one box: --box X0,Y0,X1,Y1")
    number, image = _frame(path, frame)
    if dicom_out and (not is_dicom(path) or number is not None):
        raise InputError(path, "--dicom-out needs a single-frame DICOM image")
    spacing, spacing_source = resolve_spacing(image.spacing_mm, option=spacing_mm)
    image = image.with_spacing(spacing)
    boxes = [clip_box(box, image.shape, str(path)) for box in boxes]
    outliner = BoxOutliner()  # verifies the weights before anything is written
    predictor = Predictor.default() if checkpoint is None else Predictor(checkpoint)
    claim_output_dir(out, "outline", inputs=[path], overwrite=overwrite)
    prediction = outlined(predictor, image, outliner.probabilities(
        outliner.embed(image.pixels), boxes), boxes)
    name = output_stem(path.name) + ("" if number is None else f"_frame{number:03d}")
    row = {"image_id": path.name, "patient_id": None, "frame": number, "file": str(path),
           "output_name": name, "width": image.width, "height": image.height,
           "spacing_mm": spacing_text(image.spacing_mm),
           "spacing_source": spacing_source,
           **prediction_columns(prediction, image.spacing_mm)}
    save_png(out / "masks" / f"{name}.png", prediction.mask)
    save_png(out / "overlays" / f"{name}.png",
             overlay_picture(image.pixels, prediction, image.spacing_mm))
    if dicom_out:
        from sonocad.workflows.dicom_out import write_dicom_results  # highdicom: on use

        write_dicom_results(path, [prediction.mask], [row], out / "dicom", name)
    write_predictions(out / "predictions", [row])
    return OutlineResult(out, row)


def outlined(predictor: Predictor, image: Image, probabilities: Any,
             boxes: Sequence[Box]) -> Prediction:
    """The model's prediction of `image` with its lesion map replaced by the boxes' outlines
    (`probabilities`: (N, H, W), one per box) and its decision retaken on them."""
    from sonocad.inference.box_prompt import box_lesion_map

    (prediction,) = predictor.predict_images([image])
    if isinstance(prediction, NonFiniteOutput):
        raise prediction
    lesion = box_lesion_map(probabilities)
    decision = (decide(predictor.rule, prediction.class_probabilities, lesion)
                if predictor.rule is not None and prediction.class_probabilities else None)
    return replace(prediction, lesion_probability=lesion, decision=decision, instances=None,
                   top_scores=None, prompt_boxes=tuple(boxes), _lesions={})


def _frame(path: Path, wanted: int | None) -> tuple[int | None, Image]:
    """(frame number or None for a single image, the image)."""
    for number, image in numbered_frames(path):
        if wanted is None or number == wanted or (number is None and wanted == 1):
            return number, image
    raise InputError(path, f"has no frame {wanted}")


def parse_box(text: str) -> Box:
    """"X0,Y0,X1,Y1" (pixels; x to the right, y down) -> a box; ValueError says what is wrong."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError(f"box {text!r}: expected four numbers X0,Y0,X1,Y1") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"box {text!r}: expected four numbers X0,Y0,X1,Y1")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {text!r}: X1 must be right of X0 and Y1 below Y0")
    return values  # type: ignore[return-value]


def clip_box(box: Box, shape: tuple[int, int], name: str) -> Box:
    """`box` cut to the image; `InputError` naming `name` when nothing of it is inside."""
    height, width = shape
    x0, y0, x1, y1 = box
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise InputError(name, f"box {','.join(f'{v:g}' for v in box)} lies outside the "
                               f"{width} x {height} image")
    return clipped
