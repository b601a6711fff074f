"""What the viewer's routes share: the model, its one thread, the results and the box tool.

Every image goes through one thread: one at a time, as the model already uses every core, and
always the same thread, so glibc keeps one malloc arena for the model's working memory instead
of one per request thread; and after each job the memory it freed goes back to the system
(`on_model`): memory stays flat under load.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import HTTPException

from sonocad.inference.predictor import Predictor
from sonocad.io.spacing import parse_spacing
from sonocad.serve.analysis import Analysis
from sonocad.serve.boxes import BoxTool
from sonocad.serve.results import ResultStore
from sonocad.serve.uploads import size_text

if TYPE_CHECKING:  # the explainer needs torch: imported by the app only for a checkpoint
    from sonocad.explain.runner import Explainer

T = TypeVar("T")
PICTURES = ("overlay", "heatmap", "mask")


@dataclass
class Viewer:
    predictor: Predictor
    explainer: Explainer | None
    worker: ThreadPoolExecutor
    store: ResultStore
    boxes: BoxTool

    async def on_model(self, job: Callable[..., T], *args: Any) -> T:
        """`job(*args)` on the model's thread; then the memory it freed goes back."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, _released, job,
                                                                *args)

    def need_boxes(self) -> None:
        """501, saying why, where boxes cannot be outlined (the interactive extra is missing)."""
        if not self.boxes.available:
            raise HTTPException(501, f"boxes are not available on this server: "
                                     f"{self.boxes.note}")

    def keep(self, analyses: Sequence[Analysis]) -> tuple[str, list[dict[str, Any]]]:
        """Store the pictures of `analyses` (an upload's frames, in order) as one result:
        (its id, each frame's summary with its picture URLs, numbered from 1 as predict
        numbers them, None for a single image)."""
        result_id = self.store.add({image_name(name, number): data
                                    for number, analysis in enumerate(analyses, start=1)
                                    for name, data in analysis.images.items()})
        several = len(analyses) > 1
        return result_id, [
            {"frame": number if several else None, **analysis.summary,
             **{f"{name}_url": f"/api/results/{result_id}/{image_name(name, number)}.png"
                if name in analysis.images else None for name in PICTURES}}
            for number, analysis in enumerate(analyses, start=1)]


def over_budget(size: int, max_bytes: int) -> str:
    """Why an image's pictures cannot be kept: over the result store's budget on their own."""
    return (f"this image's pictures ({size_text(size)}) are over the viewer's result budget "
            f"({size_text(max_bytes)})")


def image_name(name: str, frame: int) -> str:
    """A result's picture: "overlay" for the first frame, "overlay-2" for the second, ..."""
    return name if frame == 1 else f"{name}-{frame}"


def _released(job: Callable[..., T], *args: Any) -> T:
    """`job(*args)`; then, its frames and working arrays freed, the memory they took goes
    back to the system, whether it succeeded or not."""
    try:
        return job(*args)
    finally:
        _release_freed_memory()


def _glibc_malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library is another."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _release_freed_memory() -> None:
    # glibc keeps freed heap memory for reuse: after a large upload (decoded frames, model
    # activations, pictures) the server held 100 MB or more it no longer used.
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def spacing_field(text: str | None, field: str) -> tuple[float, float] | None:
    """An optional pixel-spacing field of a request (mm per pixel: "0.1", "0.1,0.2" or
    "0.1 x 0.2"), for images whose file carries none; 422 naming `field` when it is not one."""
    if text is None or not text.strip():
        return None
    try:
        return parse_spacing(text)
    except ValueError as exc:
        raise HTTPException(422, f"{field}: {exc}") from None
