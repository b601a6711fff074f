"""The viewer's DICOM download: a single-frame DICOM upload's lesion outline (the model's, or
that of the boxes drawn) as a DICOM Segmentation and Structured Report in the upload's study,
zipped: the files `sonocad predict --dicom-out` and `sonocad outline --dicom-out` write
(`sonocad.workflows.dicom_out`, docs/dicom.md). Runs on the model's thread."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from fastapi import HTTPException

from sonocad.errors import InputError, SonocadError
from sonocad.inference.predictor import NonFiniteOutput
from sonocad.predictions import prediction_columns
from sonocad.serve.viewer import Viewer

NAME = "sonocad"  # the files in the zip: sonocad_seg.dcm and sonocad_sr.dcm


def seg_and_sr_zip(viewer: Viewer, result_id: str,
                   boxes: Sequence[Sequence[float]] | None) -> bytes | None:
    """The zip of the SEG and SR of result `result_id`'s outline (`boxes`' or, for None, the
    model's); None when the viewer no longer holds that upload. 422 for an upload that is
    not a single-frame DICOM or cannot take derived objects, in one line."""
    held = viewer.boxes.dicom_source(result_id)
    if held is None:
        if viewer.boxes.frame(result_id, 1) is None:
            return None  # no longer kept
        raise HTTPException(422, "a SEG and SR are made for a single-frame DICOM upload only "
                                 "(a cine loop's: sonocad predict --dicom-out)")
    image, source = held
    try:
        if boxes is None:
            (prediction,) = viewer.predictor.predict_images([image])
            if isinstance(prediction, NonFiniteOutput):
                raise prediction
        else:
            viewer.need_boxes()
            _, prediction = viewer.boxes.outline(viewer.predictor, result_id, 1, boxes)
        if prediction.mask is None:
            raise HTTPException(422, "this model draws no outline: no Segmentation to make")
        row = {"frame": None, **prediction_columns(prediction, image.spacing_mm)}
        with tempfile.TemporaryDirectory(prefix="sonocad-dicom-") as folder:
            upload = Path(folder) / "upload.dcm"
            upload.write_bytes(source)
            from sonocad.workflows.dicom_out import write_dicom_results  # highdicom: on use

            written = write_dicom_results(upload, [prediction.mask], [row], Path(folder), NAME)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in written:
                    archive.write(path, path.name)
    except ValueError as exc:  # a box upside down or outside the image
        raise HTTPException(422, str(exc)) from None
    except InputError as exc:  # the source cannot take a SEG (docs/dicom.md): say why
        raise HTTPException(422, f"no SEG and SR for this file: {exc.problem}") from None
    except SonocadError as exc:  # a damaged model, missing weights
        raise HTTPException(422, f"cannot analyse this image: {exc}") from None
    return buffer.getvalue()
