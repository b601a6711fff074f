"""The HTTP API and the page of `sonocad serve`.

  GET  /                                  the viewer page (static files under /static/)
  GET  /api/health                        {"status": "ok", "version": ...}
  GET  /api/model                         name, task, class names, input size (no file paths)
  POST /api/predict                       multipart field "file": PNG, JPEG, BMP, TIFF or DICOM;
                                          optional "spacing": mm per pixel ("0.1", "0.1,0.2")
  GET  /api/results/{id}/overlay.png      the image with the predicted lesion outlined
  GET  /api/results/{id}/heatmap.png      lesion probability over the image (segmentation)
  GET  /api/results/{id}/mask.png         the lesion outline, 0/255 at the image's size
  GET  /api/results/{id}/overlay-2.png    ... of frame 2 of a cine loop (up to MAX_FRAMES)
  POST /api/results/{id}/outline          JSON {"boxes": [[x0, y0, x1, y1], ...], "frame": 1}:
                                          each box one lesion outlined by LiteMedSAM (none:
                                          no lesion); answers as /api/predict does, for the
                                          drawn outline, with its own picture URLs
  POST /api/results/{id}/prepare          JSON {"frame": 1}: embed the image for boxes now
  /api/annotate/...                       annotation mode (`sonocad.serve.annotation_api`)

Boxes need the interactive extra; without it /api/model says "boxes": false and why
("boxes_note"), and the box routes answer 501.

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

import re
import secrets
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from fastapi import Body, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sonocad import __version__
from sonocad.errors import SonocadError
from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.pixels import Image
from sonocad.io.spacing import resolve_spacing
from sonocad.predictions import THRESHOLD
from sonocad.serve.analysis import Analysis, analyse, describe
from sonocad.serve.annotate import Annotations
from sonocad.serve.annotation_api import add_annotation_routes
from sonocad.serve.boxes import MAX_BOXES, BoxTool, DicomRequest, FrameRequest, OutlineRequest
from sonocad.serve.dicom_export import seg_and_sr_zip
from sonocad.serve.hosts import HostGuard
from sonocad.serve.results import ID_PATTERN, MAX_BYTES, ResultStore
from sonocad.serve.uploads import MAX_FRAMES, UploadLimit, read_upload, size_text
from sonocad.serve.viewer import Viewer, over_budget, spacing_field

if TYPE_CHECKING:  # needs torch: imported only for a checkpoint (`_explainer`)
    from sonocad.explain.runner import Explainer

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_JSON_BYTES = 64 * 2**10  # twenty boxes and a few fields take a few hundred bytes
STATIC = Path(__file__).parent / "static"
IMAGE_NAME_PATTERN = r"^(overlay|heatmap|mask)(-[0-9]{1,3})?$"  # see `viewer.image_name`
# The routes that take a JSON body.
JSON_ROUTES = re.compile(r"/api/(results/[^/]*/(outline|prepare|dicom)|annotate/items/[^/]*)")
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
               result_bytes: int = MAX_BYTES, annotations: Annotations | None = None
               ) -> FastAPI:
    """The viewer's web app around `predictor`; `token` None leaves the API open. It answers
    to loopback names and `allowed_hosts`; `result_bytes` bounds the pictures it keeps. With
    `annotations`, the page steps through their images (annotation mode)."""
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise SonocadError("the token must be at least 16 visible ASCII characters without "
                           "spaces, e.g. from: python -c 'import secrets; "
                           "print(secrets.token_urlsafe())'")
    # Every image goes through this one thread (`sonocad.serve.viewer`).
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
    app.add_middleware(UploadLimit, path=JSON_ROUTES, max_bytes=MAX_JSON_BYTES, what="request")
    if token is not None:
        app.add_middleware(BearerToken, token=token)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)
    _add_error_handlers(app)
    store = ResultStore(max_bytes=result_bytes)
    viewer = Viewer(predictor, _explainer(predictor), worker, store, BoxTool())
    model_info = {**describe_model(predictor), "boxes": viewer.boxes.available,
                  "boxes_note": viewer.boxes.note, "max_boxes": MAX_BOXES,
                  "annotate": annotations is not None}

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
        spacing_mm = spacing_field(spacing, "spacing")  # a DICOM file's own wins
        file_format, analyses, images, frames_note = await viewer.on_model(
            _read_and_analyse, predictor, viewer.explainer, file.file, spacing_mm,
            store.max_bytes, viewer.boxes.max_bytes)
        result_id, frames = viewer.keep(analyses)
        viewer.boxes.hold(result_id, images, _dicom_file(file.file, file_format, analyses))
        return {"id": result_id, "format": file_format, **frames[0], "frames": frames,
                "frame_limit": MAX_FRAMES, "frames_note": frames_note}

    @app.post("/api/results/{result_id}/prepare")
    async def prepare(result_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
                      request: Annotated[FrameRequest | None, Body()] = None
                      ) -> dict[str, bool]:
        """Embed the image for boxes now, while the person looks at it: the first box drawn
        then costs only the mask decoder."""
        viewer.need_boxes()
        frame = (request or FrameRequest()).frame
        if not await viewer.on_model(_prepared, viewer.boxes, result_id, frame):
            raise HTTPException(404, _not_held(viewer))
        return {"ready": True}

    @app.post("/api/results/{result_id}/outline")
    async def outline(result_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
                      request: OutlineRequest) -> dict[str, Any]:
        """The lesions outlined from the boxes (every box drawn so far: the page sends them
        all; none: no lesion) with the model's call retaken on them, as /api/predict answers;
        its pictures are a result of their own."""
        viewer.need_boxes()
        analysis = await viewer.on_model(_outlined, viewer, result_id, request.frame,
                                         request.boxes)
        if analysis is None:
            raise HTTPException(404, _not_held(viewer))
        _, (frame,) = viewer.keep([analysis])
        return {"id": result_id, **frame, "frame": request.frame}

    @app.post("/api/results/{result_id}/dicom")
    async def dicom(result_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
                    request: DicomRequest) -> Response:
        """A single-frame DICOM upload's outline (the boxes', or the model's for null) as a
        DICOM Segmentation and Structured Report, zipped."""
        archive = await viewer.on_model(seg_and_sr_zip, viewer, result_id, request.boxes)
        if archive is None:
            raise HTTPException(404, _not_held(viewer))
        return Response(archive, media_type="application/zip", headers={
            "Content-Disposition": 'attachment; filename="sonocad_seg_sr.zip"'})

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

    if annotations is not None:
        add_annotation_routes(app, viewer, annotations)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _explainer(predictor: Predictor) -> Explainer | None:
    """A classifier's Grad-CAM (`grad_cam_explainer`), which needs its torch model: an ONNX
    model, the bundled default's twin included, never loads torch for it."""
    if predictor.checkpoint is None:
        return None
    from sonocad.explain.runner import grad_cam_explainer

    return grad_cam_explainer(predictor)


def _read_and_analyse(predictor: Predictor, explainer: Explainer | None, stream: BinaryIO,
                      spacing_mm: tuple[float, float] | None, max_bytes: int, hold_bytes: int
                      ) -> tuple[str, list[Analysis], list[Image], str | None]:
    """(format, its frames analysed in turn while their pictures fit in `max_bytes`, the
    first of them whose pixels fit in `hold_bytes` (kept for boxes), a note on frames left out
    or None). 422 when the first frame's pictures alone are over it."""
    file_format, frames = read_upload(stream)
    analyses: list[Analysis] = []
    images: list[Image] = []
    size = 0
    with closing(frames):  # the temporary copy goes as soon as the last frame is read
        for image in frames:
            image = _spaced(image, spacing_mm)
            try:
                analysis = analyse(predictor, image, explainer)
            except NonFiniteOutput as exc:  # a damaged model makes no call
                raise HTTPException(422, f"cannot analyse this image: {exc}") from None
            size += analysis.size
            if size > max_bytes:
                if not analyses:
                    raise HTTPException(422, over_budget(size, max_bytes))
                return file_format, analyses, images, (
                    f"the viewer shows the first {len(analyses)} frames: more would not fit "
                    f"its result budget ({size_text(max_bytes)})")
            analyses.append(analysis)
            if len(images) == len(analyses) - 1 and sum(
                    i.pixels.nbytes for i in images) + image.pixels.nbytes <= hold_bytes:
                images.append(image)
    limited = len(analyses) == MAX_FRAMES
    return file_format, analyses, images, (f"the viewer shows the first {MAX_FRAMES} frames"
                                           if limited else None)


def _dicom_file(stream: BinaryIO, file_format: str, analyses: list[Analysis]) -> bytes | None:
    """The upload's bytes when it is a single-frame DICOM (its SEG and SR can be asked for)."""
    if file_format != "DICOM" or len(analyses) != 1:
        return None
    stream.seek(0)
    return stream.read()


def _spaced(image: Image, spacing_mm: tuple[float, float] | None) -> Image:
    return image.with_spacing(resolve_spacing(image.spacing_mm, option=spacing_mm)[0])


def _not_held(viewer: Viewer) -> str:
    return (f"this image is no longer kept for boxes (the viewer keeps the latest "
            f"{viewer.boxes.max_results}); open it again")


def _prepared(boxes: BoxTool, result_id: str, frame: int) -> bool:
    try:
        return boxes.prepare(result_id, frame)
    except ValueError as exc:  # a frame not kept
        raise HTTPException(422, str(exc)) from None
    except SonocadError as exc:  # the weights are missing or damaged
        raise HTTPException(503, str(exc)) from None


def _outlined(viewer: Viewer, result_id: str, frame: int,
              boxes: list[list[float]]) -> Analysis | None:
    """The outline of `boxes` on a held frame, described; None when it is not held."""
    try:
        outcome = viewer.boxes.outline(viewer.predictor, result_id, frame, boxes)
    except ValueError as exc:  # a frame not kept, a box upside down or outside the image
        raise HTTPException(422, str(exc)) from None
    except NonFiniteOutput as exc:
        raise HTTPException(422, f"cannot analyse this image: {exc}") from None
    except SonocadError as exc:  # the weights are missing or damaged
        raise HTTPException(503, str(exc)) from None
    if outcome is None:
        return None
    image, prediction = outcome
    analysis = describe(viewer.predictor, image, prediction, from_boxes=True)
    if analysis.size > viewer.store.max_bytes:
        raise HTTPException(422, over_budget(analysis.size, viewer.store.max_bytes))
    return analysis


def describe_model(predictor: Predictor) -> dict[str, Any]:
    """What the page shows about the model: from its meta, never a file path."""
    return {
        "name": predictor.info.model.name,
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


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON {"detail": one line}; no traceback ever reaches a client."""

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": getattr(exc, "detail", "request too large")}, 413)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        # ("body", "boxes", 0, 2) -> "boxes.0.2"; a whole body that is not JSON: "body"
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[1:] or loc or ["request"]
        if error.get("type") == "json_invalid":
            where = ["body"]
        return JSONResponse({"detail": f"{'.'.join(where)}: {error['msg']}"}, 422)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (uvicorn); the client gets one line.
        return JSONResponse({"detail": "internal error; see the server log"}, 500)

    app.add_exception_handler(413, too_large)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)
