"""The service's limits on one request and on its connections, in one light module (``--help`` imports it).

A client without a token must not be able to hold the service's file descriptors or
memory: each limit bounds how much or how long one client can take.
"""

from __future__ import annotations

MAX_BODY_BYTES = 1 << 20  # larger bodies: 413
BODY_TIMEOUT_S = 30.0  # a body that takes longer to arrive: 408 (the Gate, any ASGI server)
HEADER_TIMEOUT_S = 10.0  # a connection that sends no complete request headers for this long is closed (serve)
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed (uvicorn)
MAX_CONNECTIONS = 200  # open connections of `studyhall serve`; more are answered 503 (the usual limit is 1024 fds)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
HTTP_IMPLS = ("httptools", "h11")  # uvicorn's HTTP/1.1 protocols, the default first (_server.py)
