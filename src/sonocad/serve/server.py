"""`sonocad serve`: load the model, listen, and run the app under uvicorn until Ctrl+C, with
`sonocad.serve.connections`' limits on slow and idle clients."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from sonocad.errors import SonocadError
from sonocad.inference.predictor import Predictor, natural_backend
from sonocad.serve.annotate import Annotations
from sonocad.serve.app import create_app
from sonocad.serve.connections import ConnectionLimits, protocol_class


def run(model: str | Path | None, host: str = "127.0.0.1", port: int = 8000,
        token: str | None = None, backend: str | None = None,
        allowed_hosts: Iterable[str] = (),
        annotate: tuple[str | Path, str | Path] | None = None) -> None:
    """Serve `model` (a checkpoint, or a .onnx file with backend "onnx"; None: the bundled
    default model) at http://host:port/ until interrupted. Port 0 picks a free port; the
    address is printed either way. Any host but loopback needs a token. Requests may name
    (in their Host header) a loopback name, `host` itself or one of `allowed_hosts`.
    `annotate`: (data set folder, images folder) for annotation mode
    (`sonocad.serve.annotate`)."""
    if token is None and not is_loopback(host):
        raise SonocadError(f"serving on {host} exposes the API to the network: pass a token "
                           "(clients send it as 'Authorization: Bearer <token>'), or serve on "
                           "127.0.0.1")
    predictor = Predictor.default(backend=backend) if model is None else Predictor(
        model, backend=backend or natural_backend(model))
    annotations = None if annotate is None else Annotations(*annotate)
    app = create_app(predictor, token=token, allowed_hosts=[host, *allowed_hosts],
                     annotations=annotations)
    listener = _listen(host, port)
    bound_port = listener.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    if annotations is not None:
        for skipped in annotations.skipped:
            print(f"sonocad: skipped {skipped}", file=sys.stderr)
        listing = annotations.listing()
        print(f"sonocad: annotating {listing['count']} images into {annotations.root} "
              f"({listing['done']} saved already)", flush=True)
    print(f"sonocad: serving {predictor.info.model.name} ({predictor.task.name}) at "
          f"http://{shown_host}:{bound_port}/ (Ctrl+C stops)", flush=True)
    make_server(app).run(sockets=[listener])


def make_server(app: FastAPI, limits: ConnectionLimits = ConnectionLimits(),
                log_level: str = "info") -> uvicorn.Server:
    """uvicorn serving `app` under `limits` (its `run(sockets=[...])` serves until stopped)."""
    config = uvicorn.Config(app, log_level=log_level, server_header=False,
                            timeout_graceful_shutdown=5, http=protocol_class(limits),
                            timeout_keep_alive=limits.idle_timeout_s)
    return uvicorn.Server(config)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: addresses no other machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket: a busy port or a bad host fails here, as one line, not in uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
        listener.close()
        reason = getattr(exc, "strerror", None) or exc
        raise SonocadError(f"cannot listen on {host} port {port} ({reason})") from None
    return listener
