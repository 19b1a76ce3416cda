"""The HTTP service: create-study / ask / tell over JSON, for clients in any language.

::

    request ─> _Gate (bearer token, body <= max_body_bytes, request metrics,
               │       catch-all 500 envelope)
               └─> FastAPI routes (pydantic shapes, NUL-free names; NaN/Infinity
                   rejected by the JSON parser) ─> Orchestrator / Study (their own validation)
                   ─> Leases (trials asked here are leased, see optimizer/_leases.py)
    errors ──> {"error": {"type", "message"}}: 400 InvalidRequest, 401, 404
               StudyNotFound/TrialNotFound, 409 DuplicateStudy/TrialFinished/
               LeaseExpired, 413, 422 ValidationError/InvalidJSON, 503 storage busy

Leases instead of heartbeats for trials asked here: the service does not run
them, its clients do, so they must die with their client, not with the service.
``optimizer/_leases.py`` explains how the lease is mirrored into Optuna's
heartbeat so that every stale check agrees with it. Expired leases are swept by
a background task (every ``sweep_interval``) and, throttled to the same interval,
on requests, so an app run without its lifespan (a bare TestClient) expires them too.

Run it with ``studyhall serve`` (uvicorn) or mount ``create_app(...)`` anywhere ASGI runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from optimizer import _service_models as m
from optimizer._leases import EXPIRED, Lease, Leases
from optimizer._orchestrator import Orchestrator
from optimizer._study import Study
from optimizer._summary import Summary
from storage import (
    DuplicateStudy,
    InvalidRequest,
    Storage,
    StudyNotFound,
    TransientStorageError,
    TrialNotFound,
    connect,
    retrying,
)

_log = logging.getLogger("studyhall.service")

MAX_BODY_BYTES = 1 << 20
MAX_TRIAL_NUMBER = 2**31 - 1  # Optuna's integer column


class Conflict(InvalidRequest):
    """The request is well-formed but the trial's state forbids it (told twice, lease expired)."""

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


class _StrictJSONRoute(APIRoute):
    # FastAPI's documented hook for a custom Request: every body goes through parse_json.
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))  # type: ignore[no-any-return]

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
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


def _install_error_handlers(app: FastAPI) -> None:
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


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "InvalidRequest: the values make no sense (e.g. low > high, wrong number of values)",
        401: "Unauthorized: missing or wrong bearer token",
        404: "StudyNotFound or TrialNotFound",
        409: "DuplicateStudy, TrialFinished or LeaseExpired",
        413: "PayloadTooLarge: the body exceeds the service's limit",
        422: "ValidationError or InvalidJSON: the body or a parameter has the wrong shape",
        500: "InternalError (logged by the service)",
        503: "StorageUnavailable: the database is busy; retry",
    }
    return {c: {"model": m.ErrorResponse, "description": described[c]} for c in (401, 500, 503, *codes)}


# ---- the gate: auth, body size, metrics, last-resort errors ----------------------------


class _Gate:
    """Pure ASGI middleware in front of everything (it sees the body before FastAPI does)."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int, metrics: _Metrics) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent_start = False

        async def send_tracked(message: Message) -> None:
            nonlocal status, sent_start
            if message["type"] == "http.response.start":
                status, sent_start = message["status"], True
            await send(message)

        try:
            denied = self._deny(scope)
            if denied is not None:
                await denied(scope, receive, send_tracked)
                return
            body, too_large = await self._read_body(scope, receive)
            if too_large:
                await error_response(
                    413, "PayloadTooLarge", f"the request body exceeds {self.max_body_bytes} bytes; send less per request"
                )(scope, receive, send_tracked)
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


class _Metrics:
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
        self.asked = Counter("studyhall_service_trials_asked_total", "Trials handed out over HTTP.", registry=self.registry)
        self.told = Counter("studyhall_service_trials_told_total", "Trials told over HTTP, by state.", ["state"], registry=self.registry)
        self.expired = Counter(
            "studyhall_service_leases_expired_total", "Trials failed because their lease expired.", registry=self.registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _METHODS:  # clients choose methods: keep the label set bounded
            method = "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(_shared_registry() or REGISTRY) + generate_latest(self.registry)


def _shared_registry() -> Any:
    # optimizer.telemetry.registry holds studyhall's process-wide series when that
    # module exists; until then prometheus_client's default registry stands in.
    try:
        from optimizer import telemetry
    except ImportError:
        return None
    reg = getattr(telemetry, "registry", None)
    return reg if hasattr(reg, "collect") else None


# ---- studies, cached per process -------------------------------------------------------


class _Studies:
    """Study objects by name, re-validated against the database on every use."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self._by_name: dict[str, Study] = {}

    def get(self, name: str) -> Study:
        sid = self.orch.storage.study_id(name)
        cached = self._by_name.get(name)
        if cached is not None and cached._study_id == sid:
            return cached
        # load_study raises StudyNotFound naming the known studies when sid is None.
        study = self.orch.load_study(name)
        self._by_name[name] = study
        return study

    def by_id(self, study_id: int) -> Study:
        try:
            name = retrying(self.orch.storage.optuna.get_study_name_from_id, study_id)
        except KeyError as exc:
            raise StudyNotFound(f"no study with id {study_id}") from exc
        return self.get(name)

    def put(self, study: Study) -> None:
        self._by_name[study.name] = study

    def forget(self, name: str) -> None:
        self._by_name.pop(name, None)


def _study_out(study: Study) -> dict[str, Any]:
    trials = study.trials()
    best = None
    if len(study.directions) == 1 and any(t.state.name == "COMPLETE" for t in trials):
        with contextlib.suppress(InvalidRequest):
            best = study.best_trial
    return {
        "name": study.name,
        "directions": study.directions,
        "n_trials": len(trials),
        "best_value": m.finite(best.value) if best is not None else None,
        "best_params": m.finite(best.params) if best is not None else None,
        "best_trial": best.number if best is not None else None,
        "retries": study.retries,
    }


# ---- the app ---------------------------------------------------------------------------

StudyName = Annotated[str, Path(min_length=1, max_length=m.MAX_NAME, pattern=r"^[^\x00/]+$")]
TrialNumber = Annotated[int, Path(ge=0, le=MAX_TRIAL_NUMBER)]


def create_app(
    storage: str | Storage | None = None,
    token: str | None = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    sweep_interval: float = 1.0,
) -> FastAPI:
    """The studyhall HTTP service on ``storage`` (a URL or Storage), as a FastAPI app.

    Args:
        storage: where the studies live (default ``$STUDYHALL_STORAGE``, else sqlite:///studyhall.db).
        token: if set, every endpoint but /healthz needs ``Authorization: Bearer <token>``.
        max_body_bytes: larger request bodies are answered 413.
        sweep_interval: seconds between checks for expired trial leases.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app("sqlite:///studyhall.db", token="s3cret"), port=8765)  # doctest: +SKIP
    """
    st = connect(storage)
    orch = Orchestrator(st)
    studies = _Studies(orch)
    metrics = _Metrics()
    leases = Leases(st, studies.by_id, sweep_interval=sweep_interval, on_expire=lambda _s, _n: metrics.expired.inc())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def sweep_forever() -> None:
            while True:
                await asyncio.sleep(sweep_interval)
                try:
                    await run_in_threadpool(leases.maybe_sweep)
                except Exception:  # keep sweeping; the next round retries
                    _log.exception("lease sweep failed")

        task = asyncio.create_task(sweep_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="studyhall",
        summary="Create studies, ask for trials, tell their results: Optuna studies in SQL, over HTTP.",
        version="1",
        lifespan=lifespan,
    )
    app.state.storage = st
    app.state.leases = leases
    _install_error_handlers(app)

    async def sweep() -> None:
        if leases.due():  # checked here so that most requests skip the thread hop
            await run_in_threadpool(leases.maybe_sweep)

    api = APIRouter(prefix="/v1", route_class=_StrictJSONRoute, dependencies=[Depends(sweep)])

    @api.post("/studies", status_code=201, response_model=m.StudyOut, responses=_errors(400, 409, 413, 422))
    def create_study(body: m.CreateStudy) -> dict[str, Any]:
        """Create a study (or load it with load_if_exists)."""
        study = orch.create_study(
            body.name,
            body.direction,
            directions=body.directions,
            sampler=body.sampler,
            seed=body.seed,
            load_if_exists=body.load_if_exists,
            retries=body.retries,
        )
        studies.put(study)
        return _study_out(study)

    @api.get("/studies", response_model=list[m.StudyInfoOut], responses=_errors())
    def list_studies() -> list[dict[str, Any]]:
        """Every study with its directions, trial count and best value."""
        return [{**i.__dict__, "best_value": m.finite(i.best_value)} for i in orch.list_studies()]

    @api.get("/studies/{name}", response_model=m.StudyOut, responses=_errors(404, 422))
    def get_study(name: StudyName) -> dict[str, Any]:
        """One study and its best trial so far."""
        return _study_out(studies.get(name))

    @api.delete("/studies/{name}", status_code=204, responses=_errors(404, 422))
    def delete_study(name: StudyName) -> Response:
        """Delete a study, its trials and their telemetry."""
        orch.delete_study(name)
        studies.forget(name)
        return Response(status_code=204)

    @api.post("/studies/{name}/ask", response_model=m.AskResponse, responses=_errors(400, 404, 413, 422))
    def ask(name: StudyName, body: m.AskRequest) -> dict[str, Any]:
        """Start ``k`` trials; each must be told or renewed within ``lease_s`` or it fails (and is retried)."""
        study = studies.get(name)
        space = m.space_from_spec(body.space) if body.space is not None else None
        handles, expires = leases.ask(study, space, body.k, body.lease_s)
        metrics.asked.inc(len(handles))
        return {"trials": [{"number": h.number, "params": m.finite(h.params), "lease_expires_at": expires} for h in handles]}

    @api.post(
        "/studies/{name}/trials/{number}/tell", response_model=m.TrialOut, responses=_errors(400, 404, 409, 413, 422)
    )
    def tell(name: StudyName, number: TrialNumber, body: m.TellRequest) -> dict[str, Any]:
        """Finish a trial with value(s), per-example scores, or a fail/pruned state."""
        study = studies.get(name)
        trial_id = study._trial_id(number)
        claim = leases.claim(trial_id)
        if claim is EXPIRED:
            raise Conflict(
                "LeaseExpired",
                f"the lease of trial {number} of study {name!r} expired before this tell; it is "
                "failed and retried per the study's retries. Renew leases with /heartbeat or ask for a longer lease_s",
            )
        try:
            frozen = study.tell(
                number,
                body.value,
                values=body.values,
                scores=body.scores,
                metrics=body.metrics,
                state=body.state,
                error=body.error,
                user_attrs=body.user_attrs,
            )
        except InvalidRequest as exc:
            state = retrying(st.optuna.get_trial, trial_id).state
            if state.is_finished():
                raise Conflict("TrialFinished", str(exc)) from exc
            if isinstance(claim, Lease):
                leases.restore(claim)  # the tell was rejected: the client may correct it and tell again
            raise
        metrics.told.labels(frozen.state.name.lower()).inc()
        return m.trial_out(frozen)

    @api.post(
        "/studies/{name}/trials/{number}/heartbeat",
        response_model=m.LeaseOut,
        responses=_errors(400, 404, 409, 413, 422),
    )
    def heartbeat(name: StudyName, number: TrialNumber, body: m.HeartbeatRequest | None = None) -> dict[str, Any]:
        """Renew a trial's lease (by its length, or by ``lease_s`` if given)."""
        study = studies.get(name)
        trial_id = study._trial_id(number)
        expires = leases.renew(trial_id, body.lease_s if body is not None else None)
        if isinstance(expires, float):
            return {"number": number, "lease_expires_at": expires}
        if expires is EXPIRED:
            raise Conflict("LeaseExpired", f"the lease of trial {number} of study {name!r} already expired; ask again")
        state = retrying(st.optuna.get_trial, trial_id).state
        if state.is_finished():
            raise Conflict("TrialFinished", f"trial {number} of study {name!r} is already {state.name.lower()}")
        raise Conflict(
            "NotLeased",
            f"trial {number} of study {name!r} was not asked over HTTP; the process that asked it keeps it alive",
        )

    @api.get("/studies/{name}/trials", response_model=m.TrialsPage, responses=_errors(404, 422))
    def list_trials(
        name: StudyName,
        state: m.TrialStateName | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_TRIAL_NUMBER)] = 0,
    ) -> dict[str, Any]:
        """A study's trials ordered by number, optionally only those in ``state``."""
        trials = studies.get(name).trials(states=[state] if state else None)
        page = trials[offset : offset + limit]
        return {"trials": [m.trial_out(t) for t in page], "total": len(trials), "offset": offset, "limit": limit}

    @api.get("/studies/{name}/trials/{number}", response_model=m.TrialOut, responses=_errors(404, 422))
    def get_trial(name: StudyName, number: TrialNumber) -> dict[str, Any]:
        """One trial."""
        return m.trial_out(studies.get(name).trial(number))

    @api.get(
        "/studies/{name}/trials/{number}/metrics",
        response_model=dict[str, m.SummaryOut],
        responses=_errors(404, 422),
    )
    def trial_metrics(name: StudyName, number: TrialNumber) -> dict[str, Any]:
        """Every distribution stored for the trial (score, llm.latency_s, ...)."""
        summaries: dict[str, Summary] = studies.get(name).trial_metrics(number)
        return {k: m.summary_out(s) for k, s in summaries.items()}

    @api.post("/studies/{name}/enqueue", status_code=202, response_model=m.Queued, responses=_errors(400, 404, 413, 422))
    def enqueue(name: StudyName, body: m.EnqueueRequest) -> dict[str, Any]:
        """Queue parameters for the next ask (checked against the study's last space)."""
        studies.get(name).enqueue(body.params, user_attrs=body.user_attrs)
        return {"queued": True}

    app.include_router(api)

    @app.get("/healthz", response_model=m.Health, responses={503: {"model": m.ErrorResponse}})
    def healthz() -> dict[str, str]:
        """Liveness and database reachability; never needs a token."""
        st.now()
        return {"status": "ok"}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors()},
    )
    def prometheus() -> Response:
        """Prometheus exposition: studyhall's telemetry and this service's request counters."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if token:
        _add_bearer_scheme(app)
    app.add_middleware(_Gate, token=token, max_body_bytes=max_body_bytes, metrics=metrics)
    return app


def _add_bearer_scheme(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            schema["paths"]["/healthz"]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
