"""The HTTP API and the page of `sonocad serve`.

  GET  /                                  the viewer page (static files under /static/)
  GET  /api/health                        {"status": "ok", "version": ...}
  GET  /api/model                         name, task, class names, input size (no file paths)
  POST /api/predict                       multipart field "file": PNG, JPEG, BMP, TIFF or DICOM;
                                          optional "spacing": mm per pixel ("0.1", "0.1,0.2")
  GET  /api/results/{id}/overlay.png      the image with the predicted lesion outlined
  GET  /api/results/{id}/heatmap.png      lesion probability over the image (segmentation)
  GET  /api/results/{id}/overlay-2.png    ... of frame 2 of a cine loop (up to MAX_FRAMES)

Only requests naming a loopback name or an allowed host in their Host header are answered
(400 otherwise), and a POST from another site's page (its Origin) is refused (403):
`sonocad.serve.hosts`. With a token, every /api/ request needs ``Authorization: Bearer
<token>`` (else 401, before any upload is read). An upload's pictures are kept within the
result store's byte budget: frames past it are left out (the answer's "frames_note" says so),
and an image whose first frame alone is over it is refused (422). Errors are JSON
``{"detail": "<one line>"}``. Nothing about an upload (name, content, DICOM attributes) is
logged; DICOM is read through `sonocad.io.dicom`, which never decodes patient attributes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import re
import secrets
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sonocad import __version__
from sonocad.errors import SonocadError
from sonocad.explain.runner import Explainer, grad_cam_explainer
from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.images import parse_spacing
from sonocad.io.pixels import Image
from sonocad.predictions import THRESHOLD
from sonocad.serve.analysis import Analysis, analyse
from sonocad.serve.hosts import HostGuard
from sonocad.serve.results import ID_PATTERN, MAX_BYTES, ResultStore
from sonocad.serve.uploads import MAX_FRAMES, UploadLimit, read_upload

MAX_UPLOAD_BYTES = 20 * 2**20
STATIC = Path(__file__).parent / "static"
IMAGE_NAME_PATTERN = r"^(overlay|heatmap)(-[0-9]{1,3})?$"  # see `image_name`
# Visible ASCII without spaces (it travels in a header), long enough not to be guessed.
TOKEN_PATTERN = re.compile(r"[!-~]{16,}")
# The page loads nothing from elsewhere, and no other site may frame or script it.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(predictor: Predictor, *, token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, allowed_hosts: Iterable[str] = (),
               result_bytes: int = MAX_BYTES) -> FastAPI:
    """The viewer's web app around `predictor`; `token` None leaves the API open. It answers
    to loopback names and `allowed_hosts`; `result_bytes` bounds the pictures it keeps."""
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise SonocadError("the token must be at least 16 visible ASCII characters without "
                           "spaces, e.g. from: python -c 'import secrets; "
                           "print(secrets.token_urlsafe())'")
    # Every image goes through this one thread: one at a time, as the model already uses
    # every core, and always the same thread, so glibc keeps one malloc arena for the model's
    # working memory instead of one per request thread: memory stays flat under load.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonocad-model")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    # No /docs: its page loads scripts from a CDN, and the viewer works offline.
    app = FastAPI(title="sonocad", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    # Added last runs first: the host, then the token are checked before a byte of an upload
    # is read.
    app.add_middleware(UploadLimit, path="/api/predict", max_bytes=max_upload_bytes)
    if token is not None:
        app.add_middleware(BearerToken, token=token)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)
    _add_error_handlers(app, max_upload_bytes)
    store = ResultStore(max_bytes=result_bytes)
    model_info = describe_model(predictor)
    explainer = grad_cam_explainer(predictor)

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.post("/api/predict", form_limits={"max_files": 1, "max_fields": 1})
    async def predict(file: UploadFile,
                      spacing: Annotated[str | None, Form()] = None) -> dict[str, Any]:
        """The first frame's results at the top level; every frame's (up to MAX_FRAMES of a
        cine loop or multi-page TIFF, as far as their pictures fit the store) in "frames",
        numbered from 1 as predict names them."""
        spacing_mm = _spacing_field(spacing)
        file_format, analyses, frames_note = await asyncio.get_running_loop().run_in_executor(
            worker, _analysed_upload, predictor, explainer, file.file, spacing_mm,
            store.max_bytes)
        result_id = store.add({image_name(name, number): data
                               for number, analysis in enumerate(analyses, start=1)
                               for name, data in analysis.images.items()})
        several = len(analyses) > 1
        frames = [{"frame": number if several else None, **analysis.summary,
                   **{f"{name}_url": f"/api/results/{result_id}/{image_name(name, number)}.png"
                      if name in analysis.images else None for name in ("overlay", "heatmap")}}
                  for number, analysis in enumerate(analyses, start=1)]
        return {"id": result_id, "format": file_format, **frames[0], "frames": frames,
                "frame_limit": MAX_FRAMES, "frames_note": frames_note}

    @app.get("/api/results/{result_id}/{name}.png")
    async def result_image(result_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
                           name: Annotated[str, PathParam(pattern=IMAGE_NAME_PATTERN)]
                           ) -> Response:
        data = store.get(result_id, name)
        if data is None:
            raise HTTPException(404, f"no {name} for this result (the server keeps the "
                                     f"latest {store.max_results} results)")
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _spacing_field(text: str | None) -> tuple[float, float] | None:
    """The optional form field "spacing" (mm per pixel: "0.1" or "0.1,0.2"), for images whose
    file carries none (PNG, JPEG); a DICOM file's own spacing wins."""
    if text is None or not text.strip():
        return None
    try:
        return parse_spacing(text)
    except ValueError as exc:
        raise HTTPException(422, f"spacing: {exc}") from None


def _analysed_upload(*args: Any) -> tuple[str, list[Analysis], str | None]:
    """`_read_and_analyse`; then, its frames and working arrays freed, the memory they took
    goes back to the system, whether it succeeded or not."""
    try:
        return _read_and_analyse(*args)
    finally:
        _release_freed_memory()


def _read_and_analyse(predictor: Predictor, explainer: Explainer | None, stream: BinaryIO,
                      spacing_mm: tuple[float, float] | None, max_bytes: int
                      ) -> tuple[str, list[Analysis], str | None]:
    """(format, its frames analysed in turn while their pictures fit in `max_bytes`, a note
    on frames left out or None). 422 when the first frame's pictures alone are over it."""
    file_format, frames = read_upload(stream)
    analyses: list[Analysis] = []
    size = 0
    with closing(frames):  # the temporary copy goes as soon as the last frame is read
        for image in frames:
            try:
                analysis = analyse(predictor, _spaced(image, spacing_mm), explainer)
            except NonFiniteOutput as exc:  # a damaged model makes no call
                raise HTTPException(422, f"cannot analyse this image: {exc}") from None
            size += analysis.size
            if size > max_bytes:
                if not analyses:
                    raise HTTPException(422, f"this image's pictures ({_size_text(size)}) are "
                                             f"over the viewer's result budget "
                                             f"({_size_text(max_bytes)})")
                return file_format, analyses, (
                    f"the viewer shows the first {len(analyses)} frames: more would not fit "
                    f"its result budget ({_size_text(max_bytes)})")
            analyses.append(analysis)
    limited = len(analyses) == MAX_FRAMES
    return file_format, analyses, (f"the viewer shows the first {MAX_FRAMES} frames"
                                   if limited else None)


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


def _spaced(image: Image, spacing_mm: tuple[float, float] | None) -> Image:
    if image.spacing_mm is None and spacing_mm is not None:
        return image.with_spacing(spacing_mm)
    return image


def image_name(name: str, frame: int) -> str:
    """A result's picture: "overlay" for the first frame, "overlay-2" for the second, ..."""
    return name if frame == 1 else f"{name}-{frame}"


def describe_model(predictor: Predictor) -> dict[str, Any]:
    """What the page shows about the model: from its meta, never a file path."""
    return {
        "name": predictor.meta["model"]["name"],
        "task": predictor.task.name,
        "class_names": predictor.class_names,
        "input_size": list(predictor.transform_config.size),  # (height, width)
        "lesion_threshold": THRESHOLD if predictor.task.lesion_map else None,
        "backend": predictor.backend,
    }


class BearerToken:
    """401 for any request but the page's own files without ``Authorization: Bearer <token>``,
    answered before its body is read."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._public(scope["path"]):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            # compare_digest: constant time, so the token cannot be guessed byte by byte
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given, self.token):
                response = JSONResponse({"detail": "missing or wrong token"}, 401,
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        return path == "/" or path.startswith("/static/")  # the page holds no data


def _add_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    """Every error as JSON {"detail": one line}; no traceback ever reaches a client."""

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"upload too large: the limit is "
                                       f"{_size_text(max_upload_bytes)}"}, 413)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        field = error["loc"][-1] if error.get("loc") else "request"
        return JSONResponse({"detail": f"{field}: {error['msg']}"}, 422)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (uvicorn); the client gets one line.
        return JSONResponse({"detail": "internal error; see the server log"}, 500)

    app.add_exception_handler(413, too_large)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)


def _size_text(size: int) -> str:
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size:,} bytes"
