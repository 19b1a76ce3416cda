"""HTTP plumbing of the service: the gate (Host and Origin, token, body size and time,
metrics, last-resort 500), strict JSON parsing, and the error envelope every failure answers with.

Everything here is about HTTP, nothing about studies; ``_routes.py`` holds the
routes and ``_app.py`` puts them together.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studyhall.optimizer.service import _models as m
from studyhall.optimizer.service._hosts import AllowedHosts, host_name, origin_name
from studyhall.storage import DuplicateStudy, InvalidRequest, StudyNotFound, TransientStorageError, TrialNotFound

if TYPE_CHECKING:
    from studyhall.optimizer.service._hot import HotRoutes

_log = logging.getLogger("studyhall.service")


class Conflict(InvalidRequest):
    """The trial's state forbids the request (told twice, lease expired); answered 409 with ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---- JSON that Python's parser would accept but JSON does not --------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send finite numbers (tell state='fail' for a failed trial)")


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN/Infinity literals are errors, not values (Python's parser accepts them)."""
    try:
        text = body.decode("utf-8")  # RFC 8259: JSON between systems is UTF-8
        doc = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        reason = "the body is not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        if isinstance(exc, RecursionError):
            reason = "the body nests too deeply"
        raise json.JSONDecodeError(reason, "", 0) from exc
    return doc


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON bodies go through :func:`parse_json`."""

    # FastAPI's documented hook for a custom Request class.
    def get_route_handler(self) -> Callable[[Request], Any]:
        """FastAPI's handler, given a request whose ``json()`` is :func:`parse_json`."""
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


# ---- errors ----------------------------------------------------------------------------


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error envelope every failure answers with."""
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


_HTTP_KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every studyhall error and HTTP error with the envelope."""

    def not_found(_r: Request, exc: Exception) -> JSONResponse:
        return error_response(404, type(exc).__name__, str(exc))

    def conflict(_r: Request, exc: Exception) -> JSONResponse:
        kind = exc.kind if isinstance(exc, Conflict) else type(exc).__name__
        return error_response(409, kind, str(exc))

    def invalid(_r: Request, exc: Exception) -> JSONResponse:
        return error_response(400, "InvalidRequest", str(exc))

    def busy(_r: Request, exc: Exception) -> JSONResponse:
        _log.warning("storage busy: %s", exc)
        return error_response(
            503, "StorageUnavailable", "the database is busy or unreachable; retry shortly", {"Retry-After": "1"}
        )

    def validation(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            why = "; ".join(str((e.get("ctx") or {}).get("error", e.get("msg"))) for e in errors)
            return error_response(422, "InvalidJSON", f"the request body is not valid JSON: {why}")
        parts = []
        for e in errors[:10]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return error_response(422, "ValidationError", "; ".join(parts))

    def http(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = _HTTP_KINDS.get(exc.status_code, "HTTPError")
        return error_response(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(StudyNotFound, not_found)
    app.add_exception_handler(TrialNotFound, not_found)
    app.add_exception_handler(DuplicateStudy, conflict)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(TransientStorageError, busy)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these status codes (the gate's 400, 401, 403 and 408, and 500 and 503, always)."""
    described = {
        400: "InvalidRequest: the values make no sense (e.g. low > high, wrong number of values); "
        "or HostNotAllowed: the Host header is not a name this service answers to",
        401: "Unauthorized: missing or wrong bearer token",
        403: "CrossOrigin: a browser request from a page on another site",
        404: "StudyNotFound or TrialNotFound",
        408: "RequestTimeout: the body did not arrive in time",
        409: "DuplicateStudy, TrialFinished or LeaseExpired",
        413: "PayloadTooLarge: the body exceeds the service's limit",
        422: "ValidationError or InvalidJSON: the body or a parameter has the wrong shape",
        500: "InternalError (logged by the service)",
        503: "StorageUnavailable: the database is busy; retry",
    }
    wanted = sorted({400, 401, 403, 408, 500, 503, *codes})
    return {c: {"model": m.ErrorResponse, "description": described[c]} for c in wanted}


# ---- the gate: Host and Origin, auth, body size and time, metrics, last-resort errors ---


class Gate:
    """Pure ASGI middleware in front of everything (it sees the body before FastAPI does).

    In order: a Host that is not an allowed name is 400 and a browser's cross-origin
    request 403 (``_hosts.py`` says why); a missing or wrong token 401; a body over
    ``max_body_bytes`` 413, and one that takes longer than ``body_timeout`` seconds to
    arrive 408. An answer given before the whole body was read closes the connection,
    so that a client cannot keep it open by sending the rest slowly.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        body_timeout: float,
        hosts: AllowedHosts,
        metrics: Metrics,
        hot: HotRoutes | None = None,
    ) -> None:
        self.app = app
        self.hot = hot
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.hosts = hosts
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent_start = False
        body_read = False

        async def send_tracked(message: Message) -> None:
            nonlocal status, sent_start
            if message["type"] == "http.response.start":
                status, sent_start = message["status"], True
                if not body_read:  # the rest of the body is not awaited: close rather than wait for it
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            denied = self._refuse(scope) or self._deny(scope)
            if denied is not None:
                await denied(scope, receive, send_tracked)
                return
            try:
                with anyio.fail_after(self.body_timeout):
                    body, too_large = await self._read_body(scope, receive)
            except TimeoutError:
                await error_response(
                    408,
                    "RequestTimeout",
                    f"the request body did not arrive within {self.body_timeout:g} s; send it without pauses",
                )(scope, receive, send_tracked)
                return
            if too_large:
                await error_response(
                    413,
                    "PayloadTooLarge",
                    f"the request body exceeds {self.max_body_bytes} bytes; send less per request",
                )(scope, receive, send_tracked)
                return
            body_read = True
            if self.hot is not None and await self.hot.answer(scope, body, receive, send_tracked):
                return
            await self.app(scope, _replay(body, receive), send_tracked)
        except Exception:
            _log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not sent_start:
                await error_response(
                    500, "InternalError", "the service failed on this request; the error is in its log"
                )(scope, receive, send_tracked)
        finally:
            route = scope.get("route")
            self.metrics.observe(
                scope.get("method", "?"), getattr(route, "path", "unmatched"), status, time.perf_counter() - started
            )

    def _refuse(self, scope: Scope) -> JSONResponse | None:
        host = origin = None
        for k, v in scope["headers"]:
            if k == b"host":
                host = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1")
        # No Host at all (HTTP/1.0) names nothing a rebinding attack could control.
        if host is not None and host_name(host) not in self.hosts:
            return error_response(
                400,
                "HostNotAllowed",
                f"this service answers to {self.hosts.describe()} and the request's Host header was {host[:100]!r}; "
                "if you reach it by that name, start it with --allow-host NAME (create_app(allowed_hosts=[...])), "
                "or give it a --token",
            )
        if origin is not None and origin_name(origin) not in self.hosts:
            return error_response(
                403,
                "CrossOrigin",
                f"a browser request from the page at {origin[:100]!r} was refused: web pages on other sites may not "
                "use this service. Call it from a script, or allow the page's host name with --allow-host NAME",
            )
        return None

    def _deny(self, scope: Scope) -> JSONResponse | None:
        if self.token is None or scope["path"] == "/healthz":
            return None
        given = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, given = v.partition(b" ")
                if scheme.lower() != b"bearer":
                    given = b""
                break
        if given and hmac.compare_digest(given.strip(), self.token):
            return None
        why = "a wrong bearer token" if given else "no bearer token"
        return error_response(
            401,
            "Unauthorized",
            f"this service needs a token and the request had {why}; send 'Authorization: Bearer <token>' "
            "(the value of --token or STUDYHALL_TOKEN on the server)",
            {"WWW-Authenticate": "Bearer"},
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    if int(v) > self.max_body_bytes:
                        return b"", True
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app will see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The service's Prometheus series, on a registry of this app's own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "studyhall_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "studyhall_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.asked = Counter(
            "studyhall_service_trials_asked_total", "Trials handed out over HTTP.", registry=self.registry
        )
        self.told = Counter(
            "studyhall_service_trials_told_total", "Trials told over HTTP, by state.", ["state"], registry=self.registry
        )
        self.expired = Counter(
            "studyhall_service_leases_expired_total",
            "Trials failed because their lease expired.",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency under its route template."""
        if method not in _METHODS:  # clients choose methods: keep the label set bounded
            method = "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        """studyhall's process-wide series (``telemetry.registry``), then this app's own."""
        from prometheus_client import generate_latest

        from studyhall.optimizer import telemetry

        return generate_latest(telemetry.registry) + generate_latest(self.registry)


def add_bearer_scheme(app: FastAPI) -> None:
    """Declare the bearer token in /openapi.json (every operation but /healthz needs it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            schema["paths"]["/healthz"]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
