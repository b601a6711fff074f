"""Connection limits for `sonocad serve`: slow or idle clients cannot lock others out.

uvicorn counts open connections against one global limit and has no timeout for reading a
request's headers, so a few dozen idle sockets (or a slowloris trickling header lines) made
every other client wait for ever. `GuardedH11Protocol` is uvicorn's h11 protocol with:

- a header timeout: a connection must send a whole request head within `header_timeout_s` of
  opening, or of its previous response; else it is closed;
- an idle timeout: a kept-alive connection with nothing to send is closed after
  `idle_timeout_s` (uvicorn's own keep-alive timeout);
- a cap per client address below the global one;
- at either cap, the connection idle the longest (no request in progress: between requests, or
  still sending its head) is closed to make room, so a client that sends a request at once
  is always served; only when every connection is busy is the newcomer refused with 503.

Request bodies have their own stall timeout (`sonocad.serve.uploads.UploadLimit`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REFUSAL_LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    total: int = 32  # a local viewer: one person, a few tabs
    per_client: int = 8  # a browser opens at most 6 per server
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under `limits` (see the module docstring); uvicorn makes one per
    connection. `protocol_class` binds other limits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_active = time.monotonic()
        self.refused = False
        self._deadline: asyncio.TimerHandle | None = None  # the header timeout, or a refusal's

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._set_deadline(self.limits.header_timeout_s, self._header_timeout)
        if not self._make_room():
            self._refuse()

    def data_received(self, data: bytes) -> None:
        if self.refused:  # read and dropped: see `_refuse`
            return
        self.last_active = time.monotonic()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.last_active = time.monotonic()
        # The next request's head has as long to arrive as the first one's.
        self._set_deadline(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request in progress: between requests, or its head not yet all received."""
        return self.cycle is None or self.cycle.response_complete

    @property
    def client_host(self) -> str | None:
        return self.client[0] if self.client else None

    def close(self) -> None:
        self._set_deadline(None)
        self.transport.close()

    def _make_room(self) -> bool:
        """Below both caps, closing the longest idle connection where one is full; False when
        a full one has only busy connections."""
        for cap, same_client in ((self.limits.per_client, True), (self.limits.total, False)):
            others = [other for other in self.connections
                      if isinstance(other, GuardedH11Protocol) and other is not self
                      and not other.refused and not other.transport.is_closing()
                      and (not same_client or other.client_host == self.client_host)]
            if len(others) >= cap:  # with this one, over the cap
                idle = [other for other in others if other.idle]
                if not idle:
                    return False
                min(idle, key=lambda other: other.last_active).close()
        return True

    def _set_deadline(self, seconds: float | None, action: Callable[[], None] = lambda: None
                      ) -> None:
        """`action` in `seconds`, replacing the pending one; None: no deadline."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if seconds is None else self.loop.call_later(seconds, action)

    def _header_timeout(self) -> None:
        if self.idle:  # a request whose head came in time runs as long as it needs
            self.close()

    def _refuse(self) -> None:
        """503 before any request is read (h11 lets a server answer first). The client may
        be sending its request meanwhile: closing at once, with its bytes unread, would reset
        the connection before it reads the answer; so its bytes are dropped for a moment
        (`REFUSAL_LINGER_S`, or until it closes), then the connection is closed."""
        self.refused = True
        body = b"too many connections; try again shortly"
        response = h11.Response(status_code=503, reason=b"Service Unavailable",
                                headers=[(b"content-type", b"text/plain; charset=utf-8"),
                                         (b"content-length", str(len(body)).encode()),
                                         (b"connection", b"close")])
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.write_eof()
        self._set_deadline(REFUSAL_LINGER_S, self.close)


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol for uvicorn's `http` option, under `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
