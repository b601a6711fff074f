"""Accepting an uploaded file: its size limit, its type, and its pixels as an `Image`.

The type is sniffed from the bytes (magic numbers, the DICOM preamble): the file name and the
Content-Type a client sends are never looked at, nor ever logged. Decoding is `read_image`'s,
on a private temporary copy that is deleted at once; its error messages name the problem, never
the temporary path. Its pixel budget (`sonocad.io.images.MAX_IMAGE_PIXELS`) is the one limit on
an upload's size in pixels, checked from the header before decoding, as `sonocad predict` does.
Every frame of a cine loop or multi-page TIFF is read, up to `MAX_FRAMES`, as predict does.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sonocad.errors import InputError
from sonocad.io.images import iter_frames
from sonocad.io.pixels import Image

T = TypeVar("T")
_DICOM_PREAMBLE = 128  # DICOM part 10: 128 free bytes, then b"DICM"
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "DICOM")
# Frames of one upload the viewer analyses (its slider's length): a cine loop's first 32 take
# a few seconds, and their pictures stay well inside the result store's byte budget.
MAX_FRAMES = 32


class UploadLimit:
    """413 for a request to `path` (a path, or a pattern the whole path must match) whose body
    is over `max_bytes`: at once when its Content-Length says so, else as soon as the bytes
    streamed in pass the limit, so an oversize upload is never held in full (in memory or in a
    temporary file). 408 when the body stalls for `read_timeout_s`: a slow client cannot hold a
    connection open for ever. `what` names the body in the 413's one line."""

    def __init__(self, app: ASGIApp, path: str | re.Pattern[str], max_bytes: int,
                 read_timeout_s: float = 30.0, what: str = "upload") -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes
        self.read_timeout_s = read_timeout_s
        self.too_large = f"{what} too large: the limit is {size_text(max_bytes)}"

    def _limits(self, path: str) -> bool:
        if isinstance(self.path, str):
            return path == self.path
        return self.path.fullmatch(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._limits(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        announced = int(length) if length.isdigit() else 0
        received = 0

        # Raised inside the form parser, which FastAPI lets pass as it is, so the app's handler
        # answers in JSON; the stated length is refused before a byte of the body is read.
        async def counted() -> Message:
            nonlocal received
            if announced > self.max_bytes:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.too_large)
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except TimeoutError:
                raise HTTPException(status.HTTP_408_REQUEST_TIMEOUT,
                                    f"the upload stalled (no data for {self.read_timeout_s:g} "
                                    "s)") from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.too_large)
            return message

        await self.app(scope, counted, send)


def size_text(size: int) -> str:
    """A byte count as a person reads it: "20 MiB", "10,000 bytes"."""
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size:,} bytes"


def sniff_format(head: bytes) -> str | None:
    """"PNG", "JPEG", "BMP", "TIFF" or "DICOM" from a file's first 132 bytes; None otherwise."""
    # DICOM first, as read_image does: its free preamble may itself start like another format.
    if head[_DICOM_PREAMBLE:_DICOM_PREAMBLE + 4] == b"DICM":
        return "DICOM"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def read_upload(stream: BinaryIO, max_frames: int = MAX_FRAMES
                ) -> tuple[str, Iterator[Image]]:
    """(format, its frames: one for an image, up to `max_frames` of a cine loop or multi-page
    TIFF, decoded one at a time as the caller takes them). 415 for a file that is not one of
    `FORMATS`, 422 for one that cannot be decoded or is over the pixel budget. The frames come
    from a private temporary copy, deleted when the iterator is done or closed."""
    head = stream.read(_DICOM_PREAMBLE + 4)
    if not head:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the file is empty")
    file_format = sniff_format(head)
    if file_format is None:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image")
    stream.seek(0)
    folder = tempfile.TemporaryDirectory(prefix="sonocad-upload-")
    path = Path(folder.name) / "upload"
    with open(path, "wb") as handle:
        shutil.copyfileobj(stream, handle)
    try:
        # The header is checked here, before any pixel is decoded.
        frames = _readable(lambda: iter_frames(path), path)
    except HTTPException:
        folder.cleanup()
        raise
    return file_format, _frames(frames, folder, path, max_frames)


def _frames(frames: Iterator[Image], folder: tempfile.TemporaryDirectory, path: Path,
            max_frames: int) -> Iterator[Image]:
    try:
        for _ in range(max_frames):
            frame = _readable(lambda: next(frames, None), path)
            if frame is None:
                return
            yield frame
    finally:
        folder.cleanup()


def _readable(step: Callable[[], T], path: Path) -> T:
    """`step()`; the reader's InputError as a 422 raised after it is gone: chained to it, the
    422 would keep the reader's frames alive, and with them what it had decoded or inflated
    (100 MB for a Deflate bomb), past the moment serve gives freed memory back."""
    try:
        return step()
    except InputError as exc:
        problem = exc.problem.replace(str(path), "upload")  # one line already
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                        f"cannot read this image: {problem}")
