"""The HTTP service: create-study / ask / tell over JSON, for clients in any language.

::

    request ─> Gate (bearer token, body <= max_body_bytes, request metrics,
               │      catch-all 500 envelope; in _http.py)
               └─> FastAPI routes (_routes.py; pydantic shapes in _models.py, NUL-free
                   names; NaN/Infinity rejected by the JSON parser) ─> Orchestrator / Study
                   (their own validation) ─> Leases (trials asked here are leased, _leases.py)
    errors ──> {"error": {"type", "message"}}: 400 InvalidRequest, 401, 404
               StudyNotFound/TrialNotFound, 409 DuplicateStudy/TrialFinished/
               LeaseExpired, 413, 422 ValidationError/InvalidJSON, 503 storage busy

Leases instead of heartbeats for trials asked here: the service does not run
them, its clients do, so they must die with their client, not with the service.
``_leases.py`` explains how the lease is mirrored into Optuna's heartbeat so that
every stale check agrees with it. Expired leases are swept by a background task
(every ``sweep_interval``) and, throttled to the same interval, on requests, so an
app run without its lifespan (a bare TestClient) expires them too.

Run it with ``studyhall serve`` (uvicorn) or mount ``create_app(...)`` anywhere ASGI runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from studyhall.optimizer.service._http import Gate, Metrics, add_bearer_scheme, install_error_handlers
from studyhall.optimizer.service._leases import Leases
from studyhall.optimizer.service._routes import Studies, add_health_routes, api_router
from studyhall.optimizer.study._orchestrator import Orchestrator
from studyhall.storage import Storage, connect

_log = logging.getLogger("studyhall.service")

MAX_BODY_BYTES = 1 << 20


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
    app.include_router(api_router(studies, leases, metrics))
    add_health_routes(app, st, metrics)
    if token:
        add_bearer_scheme(app)
    app.add_middleware(Gate, token=token, max_body_bytes=max_body_bytes, metrics=metrics)
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
