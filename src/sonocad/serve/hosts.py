"""Which host names the viewer answers to, and which pages may send it uploads.

A DNS-rebinding page (evil.example resolving to 127.0.0.1) reaches a loopback server as the
browser's own origin, so the browser's same-origin rules do not guard it; its requests still
name evil.example in their Host header. `HostGuard` answers only requests whose Host is a
loopback name or one the server was told (400 otherwise), and refuses a state-changing request
(POST) whose Origin is another site (403), so no other page can drive the API from a browser.
Requests without an Origin (curl, scripts) are not browsers acting for a page: they pass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# A Host header: a name or an IPv4 address, or an IPv6 address in brackets; then a port.
_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")


def host_name(text: str) -> str:
    """`text` (a name, an IP address, an IPv6 address in brackets or not) as compared: lower
    case, no trailing dot, IP addresses in their canonical form."""
    name = text.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


class HostGuard:
    """400 for a request whose Host header is not in `allowed_hosts` (loopback names are
    always in); 403 for a POST (or other state-changing method) whose Origin's host is not."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {host_name(name) for name in (*LOOPBACK_NAMES, *allowed_hosts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(Headers(scope=scope), scope["method"])
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: Headers, method: str) -> JSONResponse | None:
        host = headers.get("host", "")
        match = _HOST_HEADER.fullmatch(host)
        if match is None or host_name(match[1]) not in self.allowed:
            return JSONResponse({"detail": f"this server does not answer to host {host[:80]!r} "
                                           "(sonocad serve --allow-host NAME adds a name)"}, 400)
        origin = headers.get("origin")
        if origin is not None and method not in _SAFE_METHODS and not self._allowed_origin(
                origin):
            return JSONResponse({"detail": f"cross-site request refused (Origin "
                                           f"{origin[:80]!r})"}, 403)
        return None

    def _allowed_origin(self, origin: str) -> bool:
        try:
            name = urlsplit(origin).hostname  # None for "null" (a sandboxed page, a file)
        except ValueError:
            return False
        return name is not None and host_name(name) in self.allowed
