"""``studyhall serve``'s HTTP server: uvicorn, with a deadline on request headers and a cap on connections.

Without a token anyone on the machine (and, bound beyond loopback, anyone) may open
connections, so none may hold a file descriptor for long without sending a request::

    accept ─> more than max_connections open?  ── yes ─> 503 TooManyConnections, closed
              │ no
              └─> headers within header_timeout of the connection opening (or of the
                  previous answer on a kept-alive one)?  ── no ─> closed
                  │ yes
                  └─> the app: its Gate reads the body within body_timeout (408 if not,
                      _http.py) ─> the answer; idle keep-alive closes after 5 s (uvicorn)

uvicorn has no header deadline of its own (its keep-alive timer stops at the first
byte of the next request), so :class:`GuardedH11Protocol` adds one to its h11
protocol, the pure-Python one that is always installed.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from studyhall.optimizer.service._limits import HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS


def _busy_response(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "type": "TooManyConnections",
                "message": f"the service already has {limit} connections open, its limit; retry shortly",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, refusing connections over ``max_connections`` and closing those
    whose request headers do not arrive within ``header_timeout`` seconds (subclassed per server
    by :func:`protocol` with the two limits)."""

    header_timeout: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; refuse it over the cap, else start its header deadline."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_busy_response(self.max_connections))
            transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline of a connection that is gone."""
        self._headers_arrived()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """uvicorn's event loop over the received bytes; once a request's headers are in, no deadline."""
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._headers_arrived()

    def on_response_complete(self) -> None:
        """A kept-alive connection waits for the next request's headers under the same deadline."""
        if not self.transport.is_closing():
            self._await_headers()
        super().on_response_complete()  # may go on with a pipelined request (handle_events)

    def _await_headers(self) -> None:
        self._headers_arrived()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_arrived(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()


def protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` with these limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until interrupted, with the limits above.

    The objects alive at this point (the app, every imported module) live as long as
    the process, so they leave the garbage collector's view (``gc.freeze``): a full
    collection over them took over 100 ms, stalling every request in flight.
    """
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol(header_timeout, max_connections),
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    uvicorn.Server(config).run()
