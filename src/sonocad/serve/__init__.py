"""`sonocad serve`: a local web viewer (HTTP API + one page) around a Predictor.

`create_app` builds the FastAPI app (see `sonocad.serve.app` for the routes); `run` loads a
model and serves it with uvicorn.
"""

from sonocad.serve.app import create_app
from sonocad.serve.server import run

__all__ = ["create_app", "run"]
