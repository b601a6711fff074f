"""`sonocad serve`: a local web viewer (HTTP API + one page) around a Predictor.

`create_app` builds the FastAPI app (see `sonocad.serve.app` for the routes); `run` loads a
model and serves it with uvicorn.
"""

from sonocad.extras import require

require("serve")  # first: without fastapi or uvicorn, one line naming the extra, no traceback

from sonocad.serve.app import create_app  # noqa: E402
from sonocad.serve.server import run  # noqa: E402

__all__ = ["create_app", "run"]
