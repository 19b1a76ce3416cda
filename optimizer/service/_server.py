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
byte of the next request), so :class:`_Guards` adds one to both of its HTTP/1.1
protocols: httptools (a C parser, the default: it takes about half the server's CPU
time per request that h11 does) and h11 (pure Python), chosen with ``--http``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from studyhall.optimizer.service._limits import HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS

HttpImpl = Literal["httptools", "h11"]


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


class ConnectionCensus:
    """Open connections of every worker process of one server, a slot each in shared memory.

    The cap counts connections across ``--workers``: each worker writes its own count into
    its slot (from its event loop only) and sums every slot, so two workers accepting at
    the same instant may together go past the cap by at most one connection each.
    """

    def __init__(self, counts: Any, slot: int) -> None:
        self.counts = counts  # a multiprocessing RawArray of longs, one per worker
        self.slot = slot

    def update(self, mine: int) -> int:
        """Record this worker's open connections; the total of every worker."""
        self.counts[self.slot] = mine
        return int(sum(self.counts))


def _no_delay(transport: asyncio.BaseTransport) -> None:
    # asyncio turns Nagle's algorithm off only for sockets whose proto is IPPROTO_TCP, and
    # the listening socket `--workers` shares (uvicorn's bind_socket) has proto 0: every
    # answer sent in two writes then waited for the client's delayed ACK, 40 ms a request.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Guards:
    """The connection cap and the header deadline, for a uvicorn HTTP protocol class that follows it in the MRO.

    Each protocol says when a connection is waiting for request headers
    (:meth:`_awaiting_headers`) and calls :meth:`_await_headers` / :meth:`_headers_arrived`
    at its own points.
    """

    header_timeout: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    census: ConnectionCensus | None = None  # several worker processes: the cap is on their total
    _header_deadline: asyncio.TimerHandle | None = None
    # What the uvicorn protocol provides.
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection; refuse it over the cap, else start its header deadline."""
        _no_delay(transport)
        super().connection_made(transport)  # type: ignore[misc]
        if self._open_connections() > self.max_connections:
            self.transport.write(_busy_response(self.max_connections))
            self._close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline of a connection that is gone."""
        self._headers_arrived()
        super().connection_lost(exc)  # type: ignore[misc]
        self._open_connections()

    def _open_connections(self) -> int:
        mine = len(self.connections)
        return mine if self.census is None else self.census.update(mine)

    def _awaiting_headers(self) -> bool:
        raise NotImplementedError

    def _await_headers(self) -> None:
        self._headers_arrived()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_arrived(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing() and self._awaiting_headers():
            self._close()

    def _close(self) -> None:
        # Counted gone at once, not when connection_lost comes on a later loop turn: another
        # worker accepting meanwhile would count it and refuse a connection within the cap.
        self.transport.close()
        self.connections.discard(self)
        self._open_connections()


class GuardedH11Protocol(_Guards, H11Protocol):
    """uvicorn's h11 protocol, refusing connections over ``max_connections`` and closing those
    whose request headers do not arrive within ``header_timeout`` seconds (subclassed per server
    by :func:`protocol` with the two limits)."""

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

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


class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
    """uvicorn's httptools protocol with the same two limits as :class:`GuardedH11Protocol`."""

    def _awaiting_headers(self) -> bool:
        # self.cycle is the last request whose headers were parsed; while it is unanswered
        # (or pipelined behind another) the connection is not waiting for headers.
        return self.cycle is None or self.cycle.response_complete

    def on_headers_complete(self) -> None:
        """A request's headers are in: no deadline until it is answered."""
        self._headers_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """After an answer, a kept-alive connection waits for the next request's headers under the same deadline."""
        super().on_response_complete()  # starts a pipelined request whose headers are already in
        if not self.transport.is_closing() and self._awaiting_headers():
            self._await_headers()


_PROTOCOLS: dict[str, type[_Guards]] = {"httptools": GuardedHttpToolsProtocol, "h11": GuardedH11Protocol}


def protocol(
    header_timeout: float,
    max_connections: int,
    http: HttpImpl = "httptools",
    census: ConnectionCensus | None = None,
) -> type[asyncio.Protocol]:
    """The guarded ``http`` protocol with these limits, for ``uvicorn.Config(http=...)``."""
    base = _PROTOCOLS[http]
    limits = {"header_timeout": header_timeout, "max_connections": max_connections, "census": census}
    return type(base.__name__, (base,), limits)


def config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    http: HttpImpl = "httptools",
    census: ConnectionCensus | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the limits above (host and port unused on a socket passed in)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol(header_timeout, max_connections, http, census),
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    http: HttpImpl = "httptools",
) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until interrupted, with the limits above."""
    cfg = config(
        app,
        host,
        port,
        log_level=log_level,
        header_timeout=header_timeout,
        max_connections=max_connections,
        http=http,
    )
    Server(cfg).run()


class Server(uvicorn.Server):
    """uvicorn's server, with the objects alive when it starts out of the garbage collector's view.

    They (the app, every imported module) live as long as the process, so they leave
    the collector's view (``gc.freeze``): a full collection over them took over 100 ms,
    stalling every request in flight.
    """

    def run(self, sockets: list[Any] | None = None) -> None:
        """Serve until told to stop."""
        gc.collect()
        gc.freeze()
        super().run(sockets)
