"""The annotation mode's routes (`sonocad serve --annotate DATASET_DIR --images DIR`):

  GET  /api/annotate/items           the images (index from 0, id, saved or not, label), how
                                     many are saved, and the first one not yet saved ("next")
  GET  /api/annotate/items/{index}   the image analysed as /api/predict answers an upload
                                     (the model's outline; boxes may be drawn on its id), and
                                     "item": what was saved for it, or null
  POST /api/annotate/items/{index}   JSON {"label": "normal" | "benign" | "malignant",
                                     "patient_id": "...", "pixel_spacing_mm": "0.1" or
                                     "0.1,0.2", "outline": "model" | "box", "boxes": [...]}:
                                     save it into the data set (`sonocad.serve.annotate`),
                                     replacing what was saved before

The app's rules hold here too: Host, token, same-origin POST, the JSON body limit, one-line
errors. Only the images found in the folder given at start can be read, by their index: no path
a client sends is ever opened.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from sonocad.errors import InputError, SonocadError
from sonocad.inference.predictor import NonFiniteOutput
from sonocad.io.pixels import Image
from sonocad.serve.analysis import Analysis, analyse
from sonocad.serve.annotate import MAX_PATIENT_ID, Annotations, patient_text
from sonocad.serve.boxes import BoxList
from sonocad.serve.viewer import Viewer, over_budget, spacing_field

Index = Annotated[int, PathParam(ge=0, le=10**7)]


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["normal", "benign", "malignant"]
    patient_id: Annotated[str | None, Field(max_length=MAX_PATIENT_ID)] = None
    pixel_spacing_mm: Annotated[str | None, Field(max_length=64)] = None
    outline: Literal["model", "box"] = "model"
    boxes: BoxList = []


def add_annotation_routes(app: FastAPI, viewer: Viewer, annotations: Annotations) -> None:
    """The routes above, on `app`, over `annotations`."""
    shown: dict[int, str] = {}  # index -> the result id its image was last shown (held) under

    def item_of(index: int) -> int:
        if index >= len(annotations.items):
            raise HTTPException(404, f"no image {index}: there are {len(annotations.items)} "
                                     "(numbered from 0)")
        return index

    @app.get("/api/annotate/items")
    async def items() -> dict[str, Any]:
        return annotations.listing()

    @app.get("/api/annotate/items/{index}")
    async def item(index: Index) -> dict[str, Any]:
        index = item_of(index)
        image, analysis = await viewer.on_model(_analysed, viewer, annotations, index)
        result_id, frames = viewer.keep([analysis])
        viewer.boxes.hold(result_id, [image])
        shown[index] = result_id
        return {"id": result_id, **frames[0], "frames": frames,
                "item": _record(annotations, index)}

    @app.post("/api/annotate/items/{index}")
    async def save(index: Index, request: SaveRequest) -> dict[str, Any]:
        """Save the image's label and outline: the model's, or the boxes' (as the viewer
        outlines them; none for no lesion); a normal image is saved without a mask."""
        index = item_of(index)
        if request.outline == "box":
            viewer.need_boxes()
        try:
            patient = patient_text(request.patient_id)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        spacing = spacing_field(request.pixel_spacing_mm, "pixel_spacing_mm")
        await viewer.on_model(_saved, viewer, annotations, index, shown.get(index), request,
                              patient, spacing)
        listing = annotations.listing()
        return {"item": _record(annotations, index), "count": listing["count"],
                "done": listing["done"], "next": listing["next"]}


def _record(annotations: Annotations, index: int) -> dict[str, Any]:
    return {"index": index, "image_id": annotations.items[index].image_id,
            "saved": annotations.saved(index)}


def _analysed(viewer: Viewer, annotations: Annotations, index: int) -> tuple[Image, Analysis]:
    image = _read(annotations, index)
    try:
        analysis = analyse(viewer.predictor, image, viewer.explainer)
    except NonFiniteOutput as exc:
        raise HTTPException(422, f"cannot analyse this image: {exc}") from None
    if analysis.size > viewer.store.max_bytes:
        raise HTTPException(422, over_budget(analysis.size, viewer.store.max_bytes))
    return image, analysis


def _saved(viewer: Viewer, annotations: Annotations, index: int, shown: str | None,
           request: SaveRequest, patient: str | None,
           spacing: tuple[float, float] | None) -> None:
    """The outline made again as the page showed it (the boxes', on the image held for them;
    or the model's) and saved with the rest."""
    image = _read(annotations, index)
    try:
        if request.outline == "box":
            key = shown or f"item-{index}"
            if viewer.boxes.frame(key, 1) is None:
                viewer.boxes.hold(key, [image])
            outcome = viewer.boxes.outline(viewer.predictor, key, 1, request.boxes)
            if outcome is None:
                raise HTTPException(503, "the server is too busy to keep this image; try again")
            prediction = outcome[1]
        else:
            (prediction,) = viewer.predictor.predict_images([image])
            if isinstance(prediction, NonFiniteOutput):
                raise prediction
        mask = prediction.mask if prediction.mask is not None else np.zeros(image.shape, bool)
        annotations.save(index, request.label, patient, spacing, mask, request.outline,
                         prediction.prompt_boxes)
    except ValueError as exc:  # a box outside the image, a lesion without an outline
        raise HTTPException(422, str(exc)) from None
    except NonFiniteOutput as exc:
        raise HTTPException(422, f"cannot analyse this image: {exc}") from None
    except SonocadError as exc:  # LiteMedSAM's weights missing or damaged
        raise HTTPException(503, str(exc)) from None


def _read(annotations: Annotations, index: int) -> Image:
    try:
        return annotations.read(index)
    except InputError as exc:
        raise HTTPException(422, f"cannot read {annotations.items[index].image_id}: "
                                 f"{exc.problem}") from None
