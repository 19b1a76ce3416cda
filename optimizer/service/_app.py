"""The HTTP service: create-study / ask / tell over JSON, for clients in any language.

::

    request ─> Gate (bearer token, body <= max_body_bytes, request metrics,
               │      catch-all 500 envelope; in optimizer/_service_http.py)
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
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRouter

from studyhall.optimizer.service import _models as m
from studyhall.optimizer.service._http import (
    Conflict,
    Gate,
    Metrics,
    StrictJSONRoute,
    add_bearer_scheme,
    errors,
    install_error_handlers,
)
from studyhall.optimizer.service._leases import EXPIRED, Lease, Leases
from studyhall.optimizer.study._orchestrator import Orchestrator
from studyhall.optimizer.study._study import Study
from studyhall.optimizer.study._summary import Summary
from studyhall.storage import InvalidRequest, Storage, StudyNotFound, connect, retrying

_log = logging.getLogger("studyhall.service")

MAX_BODY_BYTES = 1 << 20
MAX_TRIAL_NUMBER = 2**31 - 1  # Optuna's integer column


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
    metrics = Metrics()
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
    install_error_handlers(app)

    async def sweep() -> None:
        if leases.due():  # checked here so that most requests skip the thread hop
            await run_in_threadpool(leases.maybe_sweep)

    api = APIRouter(prefix="/v1", route_class=StrictJSONRoute, dependencies=[Depends(sweep)])

    @api.post("/studies", status_code=201, response_model=m.StudyOut, responses=errors(400, 409, 413, 422))
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

    @api.get("/studies", response_model=list[m.StudyInfoOut], responses=errors())
    def list_studies() -> list[dict[str, Any]]:
        """Every study with its directions, trial count and best value."""
        return [{**i.__dict__, "best_value": m.finite(i.best_value)} for i in orch.list_studies()]

    @api.get("/studies/{name}", response_model=m.StudyOut, responses=errors(404, 422))
    def get_study(name: StudyName) -> dict[str, Any]:
        """One study and its best trial so far."""
        return _study_out(studies.get(name))

    @api.delete("/studies/{name}", status_code=204, responses=errors(404, 422))
    def delete_study(name: StudyName) -> Response:
        """Delete a study, its trials and their telemetry."""
        orch.delete_study(name)
        studies.forget(name)
        return Response(status_code=204)

    @api.post("/studies/{name}/ask", response_model=m.AskResponse, responses=errors(400, 404, 413, 422))
    def ask(name: StudyName, body: m.AskRequest) -> dict[str, Any]:
        """Start ``k`` trials; each must be told or renewed within ``lease_s`` or it fails (and is retried)."""
        study = studies.get(name)
        space = m.space_from_spec(body.space) if body.space is not None else None
        handles, expires = leases.ask(study, space, body.k, body.lease_s)
        metrics.asked.inc(len(handles))
        return {"trials": [{"number": h.number, "params": m.finite(h.params), "lease_expires_at": expires} for h in handles]}

    @api.post(
        "/studies/{name}/trials/{number}/tell", response_model=m.TrialOut, responses=errors(400, 404, 409, 413, 422)
    )
    def tell(name: StudyName, number: TrialNumber, body: m.TellRequest) -> dict[str, Any]:
        """Finish a trial with value(s), per-example scores, or a fail/pruned state."""
        study = studies.get(name)
        trial_id = study.trial_id(number)
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
        responses=errors(400, 404, 409, 413, 422),
    )
    def heartbeat(name: StudyName, number: TrialNumber, body: m.HeartbeatRequest | None = None) -> dict[str, Any]:
        """Renew a trial's lease (by its length, or by ``lease_s`` if given)."""
        study = studies.get(name)
        trial_id = study.trial_id(number)
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

    @api.get("/studies/{name}/trials", response_model=m.TrialsPage, responses=errors(404, 422))
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

    @api.get("/studies/{name}/trials/{number}", response_model=m.TrialOut, responses=errors(404, 422))
    def get_trial(name: StudyName, number: TrialNumber) -> dict[str, Any]:
        """One trial."""
        return m.trial_out(studies.get(name).trial(number))

    @api.get(
        "/studies/{name}/trials/{number}/metrics",
        response_model=dict[str, m.SummaryOut],
        responses=errors(404, 422),
    )
    def trial_metrics(name: StudyName, number: TrialNumber) -> dict[str, Any]:
        """Every distribution stored for the trial (score, llm.latency_s, ...)."""
        summaries: dict[str, Summary] = studies.get(name).trial_metrics(number)
        return {k: m.summary_out(s) for k, s in summaries.items()}

    @api.post("/studies/{name}/enqueue", status_code=202, response_model=m.Queued, responses=errors(400, 404, 413, 422))
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
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors()},
    )
    def prometheus() -> Response:
        """Prometheus exposition: studyhall's telemetry and this service's request counters."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if token:
        add_bearer_scheme(app)
    app.add_middleware(Gate, token=token, max_body_bytes=max_body_bytes, metrics=metrics)
    return app
