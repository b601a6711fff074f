"""Writing `sonocad predict`'s outputs while the model works on the next batch.

Pictures are drawn, encoded and written on a small thread pool (Pillow's encoders and numpy
release the GIL, so two cores do both jobs at once); each file is still written atomically.
An input's rows reach the streamed predictions table only when every file of all its frames is
on disk, in input order, so a killed run's table never names a picture that is not there and
``--resume`` can trust it.

Encoders, measured on BUSI overlays (about 500 x 600 RGB, docs/benchmarks.md): PNG at
Pillow's default level 6 takes 50 ms, level 3 20 ms at the same size, level 1 14 ms at 1.2 x
the size; JPEG at quality 90 takes 1 ms (lossy, a quarter of the size). Masks stay lossless
PNG always (0/255 grey, under 1 ms).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.errors import SonocadError
from sonocad.io.atomic import save_jpeg, save_png
from sonocad.io.pixels import MAX_IMAGE_PIXELS
from sonocad.pictures import heat_label, heatmap_picture, overlay_picture
from sonocad.predictions import Prediction, PredictionsStream

OUTPUTS = ("mask", "overlay", "heatmap", "table")
PICTURE_FORMATS = ("png", "jpeg")
PNG_LEVEL = 1  # fastest zlib level: 3.5 x faster than the default for 1.2 x the bytes
JPEG_QUALITY = 90
_WORKERS = 2
# Frames whose pictures are not yet written, and their pixels: bounds memory. Sixteen BUSI
# frames hold 6 M pixels; an image over half the size limit is written before the model
# takes the next (eight 4096^2 images: 2.0 GB queued 16 deep, 2.1 GB with one in the queue).
_MAX_PENDING = 16
_MAX_PENDING_PIXELS = MAX_IMAGE_PIXELS // 2


def parse_outputs(text: str) -> frozenset[str]:
    """'mask,overlay' -> {"mask", "overlay"}; an unknown name is a usage error."""
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(chosen - set(OUTPUTS))
    if unknown or not chosen:
        raise SonocadError(f"--outputs {text!r}: choose from {','.join(OUTPUTS)}")
    return chosen


@dataclass
class _Pending:
    file: str  # the input file the frame came from
    row: dict[str, Any]
    pixels: int  # of the frame, held until its pictures are written
    writes: list[Future] = field(default_factory=list)

    def done(self) -> bool:
        return all(write.done() for write in self.writes)


class OutputWriter:
    """Submit each predicted frame; `close` waits for the last files and ends the table."""

    def __init__(self, out: Path, table: PredictionsStream | None, *,
                 outputs: Iterable[str] = OUTPUTS, picture_format: str = "png") -> None:
        if picture_format not in PICTURE_FORMATS:
            raise SonocadError(f"picture format {picture_format!r}: choose from "
                               f"{', '.join(PICTURE_FORMATS)}")
        self.out, self.table, self.outputs = out, table, frozenset(outputs)
        self._save, self._suffix = ((_save_png, ".png") if picture_format == "png"
                                    else (_save_jpeg, ".jpg"))
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="sonocad-write")
        self._pending: deque[_Pending] = deque()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
        else:  # let running writes finish (or clean up) atomically; start no new ones
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, name: str, file: str, pixels: np.ndarray, prediction: Prediction,
               row: dict[str, Any], spacing_mm: tuple[float, float] | None,
               heat: np.ndarray | None = None) -> None:
        """Queue the frame's pictures; `heat` is a classifier's Grad-CAM (its heatmap)."""
        entry = _Pending(file, row, pixels.shape[0] * pixels.shape[1])
        for job in self._jobs(name, pixels, prediction, spacing_mm, heat):
            entry.writes.append(self._pool.submit(job))
        self._pending.append(entry)
        self._wait_for_writers()
        self._flush(current=file)

    def _wait_for_writers(self) -> None:
        """Back-pressure: the model waits while too many frames (or pixels) are unwritten.
        Written frames of the input in progress stay queued for the table, but hold no
        pixels any more, so they do not count."""
        while True:
            busy = [entry for entry in self._pending if not entry.done()]
            if (len(busy) <= _MAX_PENDING
                    and sum(entry.pixels for entry in busy) <= _MAX_PENDING_PIXELS):
                return
            for write in busy[0].writes:
                write.result()

    def submit_after(self, file: str, job: Callable[[], None]) -> None:
        """One more job of the input `file`, whose frames were all submitted last (a DICOM
        SEG, say): its rows wait for this job too."""
        if self._pending and self._pending[-1].file == file:
            self._pending[-1].writes.append(self._pool.submit(job))

    def close(self) -> None:
        for entry in self._pending:
            for write in entry.writes:
                write.result()
        self._flush(current=None)
        self._pool.shutdown(wait=True)
        if self.table is not None:
            self.table.close()

    def _jobs(self, name: str, pixels: np.ndarray, prediction: Prediction,
              spacing_mm: tuple[float, float] | None,
              heat: np.ndarray | None) -> list[Callable[[], None]]:
        mask, jobs = prediction.mask, []
        if "mask" in self.outputs and mask is not None:
            jobs.append(lambda: _save_png(self.out / "masks" / f"{name}.png", mask))
        if "overlay" in self.outputs:
            jobs.append(lambda: self._save(self.out / "overlays" / f"{name}{self._suffix}",
                                           overlay_picture(pixels, prediction, spacing_mm)))
        probability = prediction.lesion_probability if mask is not None else heat
        if "heatmap" in self.outputs and probability is not None:
            jobs.append(lambda: self._save(self.out / "heatmaps" / f"{name}{self._suffix}",
                                           heatmap_picture(pixels, probability,
                                                           heat_label(prediction))))
        return jobs

    def _flush(self, current: str | None) -> None:
        """Rows of finished inputs, oldest first: an input is finished when a later one has
        begun (or the run ends) and every file of its frames is written."""
        while self._pending and self._pending[0].file != current:
            file = self._pending[0].file
            frames = []
            for entry in self._pending:
                if entry.file != file:
                    break
                frames.append(entry)
            if not all(entry.done() for entry in frames):
                return
            for entry in frames:
                for write in entry.writes:
                    write.result()  # a failed write (disk full, say) surfaces here
                self._pending.popleft()
            if self.table is not None:
                self.table.add([entry.row for entry in frames])


def _save_png(path: Path, pixels: np.ndarray) -> None:
    save_png(path, pixels, compress_level=PNG_LEVEL)


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    save_jpeg(path, pixels, quality=JPEG_QUALITY)
