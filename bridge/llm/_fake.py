"""FakeProvider: a real OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

::

    client ──HTTP──> ThreadingHTTPServer (a thread per connection, keep-alive)
                       POST /v1/chat/completions
                         auth?  ──> 401
                         admission: RPM and TPM token buckets (continuous refill,
                                    TPM charged as prompt tokens + max_tokens) ──> 429
                                    with retry-after, retry-after-ms, x-ratelimit-*
                         error_rate (seeded) ──> 500 / 503
                         sleep latency_s, responder(messages, model) -> text
                         200 {choices, usage}
                       GET /v1/models

It enforces its limits the way OpenAI does, so a client that stays under them
sees no 429 at all, and one that does not is told how long to wait.

Token counts use the usual rule of thumb for English: ``ceil(chars / 4)`` per
message content, plus 3 tokens per message and 3 to prime the reply (OpenAI's
documented chat overhead).
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from studyhall.bridge._errors import InvalidRequest

Messages = Sequence[dict[str, Any]]
DEFAULT_MAX_TOKENS = 256
PER_MESSAGE_TOKENS = 3
REPLY_TOKENS = 3


def count_tokens(text: str) -> int:
    """FakeProvider's token count of ``text``: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / 4)


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message (a string content, or the text parts of a list)."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def prompt_tokens(messages: Messages) -> int:
    """FakeProvider's count of a prompt's tokens."""
    return sum(count_tokens(message_text(m)) + PER_MESSAGE_TOKENS for m in messages) + REPLY_TOKENS


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.0f}s"


def _default_responder(messages: Messages, model: str) -> str:
    last = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"fake answer to: {last[:200]}"


class _Bucket:
    """A token bucket with continuous refill (None capacity: unlimited)."""

    def __init__(self, capacity: float | None, per: float) -> None:
        self.capacity = capacity
        self.rate = (capacity / per) if capacity else 0.0
        self.level = float(capacity or 0.0)
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        if self.capacity is not None:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float) -> float:
        if self.capacity is None or self.level >= cost:
            return 0.0
        return (cost - self.level) / self.rate

    def reset_s(self) -> float:
        if self.capacity is None:
            return 0.0
        return (self.capacity - self.level) / self.rate


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: a clean stop
    block_on_close = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__((provider.host, provider.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def wake_idle_connections(self) -> None:
        # Idle keep-alive connections block their handler thread in recv(); a
        # read-side shutdown lets those threads finish without cutting a response.
        with self.sockets_lock:
            for s in list(self.open_sockets):
                try:
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60  # an idle keep-alive connection is closed after a minute
    # Headers and body as one segment, sent at once: otherwise Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer on loopback.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass  # quiet: tests and benchmarks make thousands of requests

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        p = self.server.provider
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(
                200,
                {"object": "list", "data": [{"id": p.model, "object": "model", "created": 0, "owned_by": "studyhall"}]},
            )
        else:
            self._error(
                404, f"no route GET {self.path}; FakeProvider serves POST /v1/chat/completions", "invalid_request_error"
            )

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        """Route and authenticate, read the request, admit it (or 429), fail it (seeded 5xx), or answer."""
        p = self.server.provider
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route POST {self.path}; use /v1/chat/completions", "invalid_request_error")
            return
        p._count("requests")
        if p.api_key is not None and self.headers.get("Authorization") != f"Bearer {p.api_key}":
            p._count("bad_requests")
            self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return
        request = self._read(raw)
        if request is None:
            return
        messages, model, max_tokens = request
        prompt = prompt_tokens(messages)
        headers = self._admission(prompt + max_tokens)
        if headers is None:
            return
        text = self._respond(messages, model, headers)
        if text is not None:
            self._answer(text, model, prompt, max_tokens, headers)

    def _read(self, raw: bytes) -> tuple[list[dict[str, Any]], str, int] | None:
        """The request's messages, model and max_tokens; None after answering 400."""
        p = self.server.provider
        try:
            body = json.loads(raw or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise TypeError("messages must be a list of objects")
            model = str(body.get("model") or p.model)
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
            if max_tokens < 1:
                raise ValueError("max_tokens must be at least 1")
            if body.get("stream"):
                raise ValueError("stream=true is not supported by FakeProvider")
        except (ValueError, TypeError, KeyError) as exc:
            p._count("bad_requests")
            self._error(400, f"invalid request body: {exc}", "invalid_request_error")
            return None
        return messages, model, max_tokens

    def _admission(self, cost: int) -> dict[str, str] | None:
        """The rate-limit headers of an admitted request; None after answering 429."""
        status, headers = self.server.provider._admit(cost)
        if status == 429:
            msg = headers.pop("_message")
            self._error(429, msg, "requests" if "requests" in msg else "tokens", "rate_limit_exceeded", headers)
            return None
        if status == 413:  # larger than the bucket: OpenAI says so with a 429 that is not worth retrying
            msg = headers.pop("_message")
            headers["x-should-retry"] = "false"
            self._error(429, msg, "tokens", "rate_limit_exceeded", headers)
            return None
        return headers

    def _respond(self, messages: list[dict[str, Any]], model: str, headers: dict[str, str]) -> str | None:
        """The answer's text after the latency; None after answering a (seeded or responder's) 5xx."""
        p = self.server.provider
        delay, fail = p._draw(messages, model)
        if delay > 0:
            time.sleep(delay)
        if fail:
            p._count("server_errors")
            self._error(fail, "The server had an error while processing your request.", "server_error", None, headers)
            return None
        try:
            return str(p.responder(messages, model))
        except Exception as exc:  # noqa: BLE001 - a broken responder is the provider's 500
            p._count("server_errors")
            self._error(500, f"responder failed: {type(exc).__name__}: {exc}", "server_error", None, headers)
            return None

    def _answer(self, text: str, model: str, prompt: int, max_tokens: int, headers: dict[str, str]) -> None:
        """200 with the completion, cut to ``max_tokens`` (finish_reason "length")."""
        finish = "stop"
        if count_tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        completion = count_tokens(text)
        self.server.provider._count("completed")
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            headers,
        )


class FakeProvider:
    """A real OpenAI-compatible HTTP server on loopback with OpenAI-style RPM/TPM limits.

    Args:
        rpm: requests allowed per ``per`` seconds (None: unlimited).
        tpm: tokens allowed per ``per`` seconds, charged as prompt tokens + max_tokens
            when a request is admitted (None: unlimited).
        latency_s: seconds each answer takes: a number, a ``(lo, hi)`` range drawn
            uniformly (seeded), or a callable ``(messages, model) -> seconds``.
        error_rate: probability (seeded) that an admitted request fails with 500 or 503.
        responder: ``(messages, model) -> str``, the answer text; default echoes.
        seed: seeds the error and latency draws.
        per: the limits' window in seconds (60 like OpenAI; shorten it for fast tests).
        api_key: when given, requests must carry ``Authorization: Bearer <api_key>``.
        model: the model name /v1/models lists and answers default to.

    Example:
        >>> with FakeProvider(rpm=600, tpm=100_000) as fp:  # doctest: +SKIP
        ...     openai.OpenAI(base_url=fp.base_url, api_key="x").chat.completions.create(...)
    """

    def __init__(
        self,
        rpm: float | None = 600,
        tpm: float | None = 100_000,
        latency_s: float | tuple[float, float] | Callable[[Messages, str], float] = 0.02,
        error_rate: float = 0.0,
        responder: Callable[[Messages, str], str] | None = None,
        seed: int = 0,
        *,
        per: float = 60.0,
        api_key: str | None = None,
        model: str = "fake-model",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for label, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and not v > 0:
                raise InvalidRequest(f"FakeProvider {label}={v!r} must be positive (or None for no limit)")
        if not 0.0 <= error_rate <= 1.0:
            raise InvalidRequest(f"FakeProvider error_rate={error_rate!r} must be within [0, 1]")
        if not per > 0:
            raise InvalidRequest(f"FakeProvider per={per!r} must be a positive number of seconds")
        if isinstance(latency_s, tuple) and not (len(latency_s) == 2 and 0 <= latency_s[0] <= latency_s[1]):
            raise InvalidRequest(f"FakeProvider latency_s={latency_s!r} must be a number, (lo, hi) or a callable")
        self.rpm, self.tpm, self.per = rpm, tpm, per
        self.latency_s = latency_s
        self.error_rate = error_rate
        self.responder = responder or _default_responder
        self.api_key = api_key
        self.model = model
        self.host, self.port = host, port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests = _Bucket(rpm, per)
        self._tokens = _Bucket(tpm, per)
        self._stats = dict.fromkeys(("requests", "completed", "rate_limited", "server_errors", "bad_requests"), 0)
        self._stats["tokens"] = 0
        self._admitted: list[tuple[float, int]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeProvider:
        """Start serving in a background thread (returns at once, ready to answer)."""
        if self._server is not None:
            return self
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        with self._lock:  # the buckets start full when the server starts
            now = time.monotonic()
            self._requests.stamp = self._tokens.stamp = now
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="studyhall-fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.wake_idle_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the base URL to give an OpenAI client."""
        if self._server is None:
            raise InvalidRequest("FakeProvider is not running; use `with FakeProvider() as fp:` or fp.start()")
        return f"http://{self.host}:{self.port}/v1"

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "stopped"
        return f"FakeProvider(rpm={self.rpm}, tpm={self.tpm}, per={self.per:g}, {where})"

    # ------------------------------------------------------------ observation

    def stats(self) -> dict[str, int]:
        """Counts so far: requests, completed, rate_limited, server_errors, bad_requests, tokens (charged)."""
        with self._lock:
            return dict(self._stats)

    def admitted(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), tokens charged)`` of every admitted request, in admission order."""
        with self._lock:
            return list(self._admitted)

    # ------------------------------------------------------------ internals (handler threads)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _admit(self, cost: int) -> tuple[int, dict[str, str]]:
        with self._lock:
            now = time.monotonic()
            self._requests.refill(now)
            self._tokens.refill(now)
            if self.tpm is not None and cost > self.tpm:
                self._stats["rate_limited"] += 1
                return 413, {
                    "_message": f"Request too large for {self.model}: Limit {self.tpm:g}, Requested {cost}. "
                    "The input or output tokens must be reduced in order to run successfully."
                }
            wait_r = self._requests.wait_for(1)
            wait_t = self._tokens.wait_for(cost)
            if wait_r > 0 or wait_t > 0:
                self._stats["rate_limited"] += 1
                headers = self._limit_headers()
                wait = max(wait_r, wait_t)
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                which = "requests" if wait_r >= wait_t else "tokens"
                limit = self.rpm if which == "requests" else self.tpm
                headers["_message"] = (
                    f"Rate limit reached for {self.model} on {which} per {self.per:g}s: Limit {limit:g}. "
                    f"Please try again in {format_reset(wait)}."
                )
                return 429, headers
            if self.rpm is not None:
                self._requests.level -= 1
            if self.tpm is not None:
                self._tokens.level -= cost
            self._stats["tokens"] += cost
            self._admitted.append((now, cost))
            return 200, self._limit_headers()

    def _limit_headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        for kind, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket.capacity is None:
                continue
            h[f"x-ratelimit-limit-{kind}"] = f"{bucket.capacity:g}"
            h[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            h[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.reset_s())
        return h

    def _draw(self, messages: Messages, model: str) -> tuple[float, int]:
        lat = self.latency_s
        with self._lock:
            fail = 0
            if self.error_rate and self._rng.random() < self.error_rate:
                fail = self._rng.choice((500, 503))
            if isinstance(lat, tuple):
                delay = self._rng.uniform(*lat)
            elif callable(lat):
                delay = -1.0
            else:
                delay = float(lat)
        if delay < 0:
            assert callable(lat)
            delay = float(lat(messages, model))
        return delay, fail


__all__ = ["FakeProvider", "count_tokens", "format_reset", "prompt_tokens"]
