"""The HTTP service: create-study / ask / tell over JSON, for clients in any language.

::

    request ─> Gate (Host and Origin are allowed names (_hosts.py), bearer token,
               │      body <= max_body_bytes within body_timeout, request metrics,
               │      catch-all 500 envelope; in _http.py)
               ├─> an ordinary ask or tell: the same work without FastAPI's layers (_hot.py)
               └─> FastAPI routes (_routes.py; pydantic shapes in _models.py, NUL-free
                   names; NaN/Infinity rejected by the JSON parser) ─> Orchestrator / Study
                   (their own validation) ─> Leases (trials asked here are leased, _leases.py)
    errors ──> {"error": {"type", "message"}}: 400 InvalidRequest/HostNotAllowed,
               401, 403 CrossOrigin, 404 StudyNotFound/TrialNotFound, 408 (slow body),
               409 DuplicateStudy/TrialFinished/LeaseExpired, 413, 422 ValidationError/
               InvalidJSON, 503 storage busy

Leases instead of heartbeats for trials asked here: the service does not run
them, its clients do, so they must die with their client, not with the service.
``_leases.py`` explains how the lease is mirrored into Optuna's heartbeat so that
every stale check agrees with it. Expired leases are swept by a background task
(every ``sweep_interval``) and, throttled to the same interval, on requests, so an
app run without its lifespan (a bare TestClient) expires them too.

Run it with ``studyhall serve`` (uvicorn, with the header timeout and connection cap of
``_server.py``) or mount ``create_app(...)`` anywhere ASGI runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from studyhall.optimizer.service._hosts import AllowedHosts
from studyhall.optimizer.service._hot import HotRoutes
from studyhall.optimizer.service._http import Gate, Metrics, add_bearer_scheme, install_error_handlers
from studyhall.optimizer.service._leases import Leases
from studyhall.optimizer.service._limits import BODY_TIMEOUT_S, MAX_BODY_BYTES
from studyhall.optimizer.service._routes import Studies, add_health_routes, api_router
from studyhall.optimizer.study._orchestrator import Orchestrator
from studyhall.storage import InvalidRequest, Storage, connect

_log = logging.getLogger("studyhall.service")


def create_app(
    storage: str | Storage | None = None,
    token: str | None = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout: float = BODY_TIMEOUT_S,
    allowed_hosts: Iterable[str] | None = None,
    sweep_interval: float = 1.0,
) -> FastAPI:
    """The studyhall HTTP service on ``storage`` (a URL or Storage), as a FastAPI app.

    Args:
        storage: where the studies live (default ``$STUDYHALL_STORAGE``, else sqlite:///studyhall.db).
        token: if set, every endpoint but /healthz needs ``Authorization: Bearer <token>``.
        max_body_bytes: larger request bodies are answered 413.
        body_timeout: seconds a request body may take to arrive; slower ones are answered 408.
        allowed_hosts: host names the service answers to besides loopback (``"*"``: any). By
            default a service without a token answers only to loopback names, so that no web
            page can reach it through DNS rebinding, and one with a token to any name.
            Browser requests whose Origin is not an allowed name are refused either way.
        sweep_interval: seconds between checks for expired trial leases.

    Raises:
        InvalidRequest: a limit is not a positive number.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app("sqlite:///studyhall.db", token="s3cret"), port=8765)  # doctest: +SKIP
    """
    if not max_body_bytes > 0 or not body_timeout > 0:
        raise InvalidRequest(
            f"max_body_bytes={max_body_bytes!r} and body_timeout={body_timeout!r} must both be positive"
        )
    hosts = AllowedHosts(allowed_hosts or (), any_host=bool(token) and allowed_hosts is None)
    st = connect(storage)
    studies = Studies(Orchestrator(st))
    metrics = Metrics()
    leases = Leases(st, studies.by_id, sweep_interval=sweep_interval, on_expire=lambda _s, _n: metrics.expired.inc())
    app = FastAPI(
        title="studyhall",
        summary="Create studies, ask for trials, tell their results: Optuna studies in SQL, over HTTP.",
        version="1",
        lifespan=_sweeping(leases, sweep_interval),
    )
    app.state.storage = st
    app.state.leases = leases
    install_error_handlers(app)
    api = api_router(studies, leases, metrics)
    app.include_router(api.router)
    add_health_routes(app, st, metrics)
    if token:
        add_bearer_scheme(app)
    app.add_middleware(
        Gate,
        token=token,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        hosts=hosts,
        metrics=metrics,
        hot=HotRoutes(app, api.sweep, api.ask, api.tell),
    )
    return app


def _sweeping(leases: Leases, interval: float) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: a background task that expires unrenewed leases every ``interval`` seconds."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def sweep_forever() -> None:
            while True:
                await asyncio.sleep(interval)
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

    return lifespan
