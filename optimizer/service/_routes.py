"""The service's routes: studies, leased trials, trials, and the unversioned health and metrics.

Each group is a function that adds its routes; ``create_app`` (``_app.py``) wires
them to one Orchestrator, one lease keeper and one set of request metrics. The
routes only translate: validation is the pydantic models' (``_models.py``) and the
Study's own, errors become the envelope in ``_http.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRouter
from optuna.trial import FrozenTrial

from studyhall.optimizer.service import _models as m
from studyhall.optimizer.service._http import Conflict, Metrics, StrictJSONRoute, errors
from studyhall.optimizer.service._leases import Leases
from studyhall.optimizer.study._orchestrator import Orchestrator
from studyhall.optimizer.study._study import Study
from studyhall.optimizer.study._summary import Summary
from studyhall.storage import InvalidRequest, Storage, StudyNotFound, retrying
from studyhall.storage._leases import EXPIRED, LeaseRanOut
from studyhall.storage._sqlite import WouldWait, unless_waiting

T = TypeVar("T")
AskWork = Callable[[str, m.AskRequest], Awaitable[dict[str, Any]]]
"""ask's work, ``(study name, body) -> answer``: the route's and the gate's fast path's (``_hot.py``)."""
TellWork = Callable[[str, int, m.TellRequest], Awaitable[dict[str, Any]]]
"""tell's work, ``(study name, trial number, body) -> answer``."""

StudyName = Annotated[str, Path(min_length=1, max_length=m.MAX_NAME, pattern=r"^[^\x00/]+$")]
TrialNumber = Annotated[int, Path(ge=0, le=m.MAX_TRIAL_NUMBER)]


class Studies:
    """Study objects by name: re-validated against the database (:meth:`get`), or trusted (:meth:`using`).

    A study's id never changes, so ask and tell skip the name lookup and use the
    Study this process already has. The writes they make check the study themselves
    (the ask's transaction its id and name, the tell's the trial row), and a refusal
    re-validates the name: a study deleted (or deleted and created again) elsewhere
    meanwhile is then answered as if the lookup had been made first.
    """

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self._by_name: dict[str, Study] = {}

    def using(self, name: str, op: Callable[[Study], T]) -> T:
        """``op(study)`` on the cached study ``name``; if it is refused, again on the study the name is now.

        Safe to repeat because a refused ask or tell wrote nothing on a study that is
        gone; ``op`` runs a second time only when the name now means another study.
        """
        cached = self._by_name.get(name)
        if cached is None:
            return op(self.get(name))
        try:
            return op(cached)
        except (KeyError, InvalidRequest):  # StudyNotFound and TrialNotFound are both
            current = self.get(name)  # StudyNotFound if it is gone
            if current is cached:
                raise
        return op(current)

    def get(self, name: str) -> Study:
        """The study ``name`` (StudyNotFound naming the known ones if there is none)."""
        sid = self.orch.storage.study_id(name)
        cached = self._by_name.get(name)
        if cached is not None and cached._study_id == sid:
            return cached
        # load_study raises StudyNotFound naming the known studies when sid is None.
        study = self.orch.load_study(name)
        self._by_name[name] = study
        return study

    def by_id(self, study_id: int) -> Study:
        """The study with Optuna id ``study_id`` (the lease keeper's lookup)."""
        try:
            name = retrying(self.orch.storage.optuna.get_study_name_from_id, study_id)
        except KeyError as exc:
            raise StudyNotFound(f"no study with id {study_id}") from exc
        return self.get(name)

    def put(self, study: Study) -> None:
        """Cache a study just created."""
        self._by_name[study.name] = study

    def forget(self, name: str) -> None:
        """Drop a deleted study from the cache."""
        self._by_name.pop(name, None)


def study_out(study: Study) -> dict[str, Any]:
    """A study as the StudyOut JSON: directions, trial count, best trial so far, retries."""
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


@dataclasses.dataclass(frozen=True)
class Api:
    """The /v1 routes, and the work of ask and tell for the gate's fast path (``_hot.py``)."""

    router: APIRouter
    sweep: Callable[[], Awaitable[None]]
    ask: AskWork
    tell: TellWork


def api_router(studies: Studies, leases: Leases, metrics: Metrics) -> Api:
    """Everything under /v1; each request first gives expired leases a chance to be swept."""

    async def sweep() -> None:
        if leases.due():  # checked here so that most requests skip the thread hop
            await run_in_threadpool(leases.maybe_sweep)

    api = APIRouter(prefix="/v1", route_class=StrictJSONRoute, dependencies=[Depends(sweep)])
    add_study_routes(api, studies)
    ask, tell = add_leased_trial_routes(api, studies, leases, metrics)
    add_trial_routes(api, studies)
    return Api(api, sweep, ask, tell)


def add_study_routes(api: APIRouter, studies: Studies) -> None:
    """Create, list, read and delete studies."""
    orch = studies.orch

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
        return study_out(study)

    @api.get("/studies", response_model=list[m.StudyInfoOut], responses=errors())
    def list_studies() -> list[dict[str, Any]]:
        """Every study with its directions, trial count and best value."""
        return [{**i.__dict__, "best_value": m.finite(i.best_value)} for i in orch.list_studies()]

    @api.get("/studies/{name}", response_model=m.StudyOut, responses=errors(404, 422))
    def get_study(name: StudyName) -> dict[str, Any]:
        """One study and its best trial so far."""
        return study_out(studies.get(name))

    @api.delete("/studies/{name}", status_code=204, responses=errors(404, 422))
    def delete_study(name: StudyName) -> Response:
        """Delete a study, its trials and their telemetry."""
        orch.delete_study(name)
        studies.forget(name)
        return Response(status_code=204)


def add_leased_trial_routes(
    api: APIRouter, studies: Studies, leases: Leases, metrics: Metrics
) -> tuple[AskWork, TellWork]:
    """Ask (a lease starts), tell (it ends) and heartbeat (it is renewed); also the work of ask and tell."""
    st = studies.orch.storage
    pool = worker_threads(st)

    # ask and tell are the hot path: async work that answers JSON it built itself, its
    # database work done by _database_work (on SQLite right on the event loop, elsewhere on
    # a worker thread). (A sync endpoint hops to a thread twice: FastAPI validates its
    # return value against response_model in the threadpool too. response_model stays, for
    # the OpenAPI schema that clients and the fuzz tests check.)
    # The gate answers ordinary asks and tells with the same work, without FastAPI (_hot.py).
    inline_wait_s = INLINE_TURN_WAIT_S.get(st.dialect)
    ask_costs = AskCosts()

    async def ask_work(name: str, body: m.AskRequest) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            started = time.thread_time()
            space = m.space_from_spec(body.space) if body.space is not None else None
            handles, expires = studies.using(name, lambda study: leases.ask(study, space, body.k, body.lease_s))
            ask_costs.record(name, time.thread_time() - started)
            metrics.asked.inc(len(handles))
            trials = [{"number": h.number, "params": m.finite(h.params), "lease_expires_at": expires} for h in handles]
            return {"trials": trials}

        return await _database_work(pool, work, inline_wait_s if ask_costs.inline(name) else None)

    async def tell_work(name: str, number: int, body: m.TellRequest) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            frozen = studies.using(name, lambda study: _tell(study, number, body, leases, st))
            metrics.told.labels(frozen.state.name.lower()).inc()
            return m.trial_out(frozen)

        return await _database_work(pool, work, inline_wait_s)

    @api.post("/studies/{name}/ask", response_model=m.AskResponse, responses=errors(400, 404, 413, 422))
    async def ask(name: StudyName, body: m.AskRequest) -> Response:
        """Start ``k`` trials; each must be told or renewed within ``lease_s`` or it fails (and is retried)."""
        return JSONResponse(await ask_work(name, body))

    @api.post(
        "/studies/{name}/trials/{number}/tell", response_model=m.TrialOut, responses=errors(400, 404, 409, 413, 422)
    )
    async def tell(name: StudyName, number: TrialNumber, body: m.TellRequest) -> Response:
        """Finish a trial with value(s), per-example scores, or a fail/pruned state."""
        return JSONResponse(await tell_work(name, number, body))

    @api.post(
        "/studies/{name}/trials/{number}/heartbeat",
        response_model=m.LeaseOut,
        responses=errors(400, 404, 409, 413, 422),
    )
    def heartbeat(name: StudyName, number: TrialNumber, body: m.HeartbeatRequest | None = None) -> dict[str, Any]:
        """Renew a trial's lease (by its length, or by ``lease_s`` if given)."""
        trial_id = studies.get(name).trial_id(number)
        expires = leases.renew(trial_id, body.lease_s if body is not None else None)
        if isinstance(expires, float):
            return {"number": number, "lease_expires_at": expires}
        if expires is EXPIRED:
            raise Conflict("LeaseExpired", f"the lease of trial {number} of study {name!r} already expired; ask again")
        state = st.optuna.get_trial(trial_id).state
        if state.is_finished():
            raise Conflict("TrialFinished", f"trial {number} of study {name!r} is already {state.name.lower()}")
        raise Conflict(
            "NotLeased",
            f"trial {number} of study {name!r} was not asked over HTTP; the process that asked it keeps it alive",
        )

    return ask_work, tell_work


def _tell(study: Study, number: int, body: m.TellRequest, leases: Leases, st: Storage) -> FrozenTrial:
    # The lease is taken in the tell's own transaction: of the tell and an expiry sweep
    # (which claims the same row) only one proceeds, and a rejected tell keeps its lease.
    trial_id = study.trial_id(number)
    try:
        return study._tell(
            number,
            body.value,
            values=body.values,
            scores=body.scores,
            metrics=body.metrics,
            state=body.state,
            error=body.error,
            user_attrs=body.user_attrs,
            extra=leases.claiming(trial_id, body.key),
        )
    except InvalidRequest as exc:
        # This very tell, sent again after its answer was lost: the trial as it stored it.
        if body.key is not None and leases.told_by(trial_id, body.key):
            return st.optuna.get_trial(trial_id)
        if not isinstance(exc, LeaseRanOut):
            now = st.optuna.get_trial(trial_id)
            if now.state.is_finished():
                # Finished before this tell read it, or (a sweep in another thread or worker) after.
                why = "; its lease had expired" if now.user_attrs.get("failure") == "lease" else ""
                raise Conflict(
                    "TrialFinished",
                    f"trial {number} of study {study.name!r} is already finished ({now.state.name}){why}; "
                    "ask for a new trial instead",
                ) from exc
            raise
        raise Conflict(
            "LeaseExpired",
            f"the lease of trial {number} of study {study.name!r} expired before this tell; it is "
            "failed and retried per the study's retries. Renew leases with /heartbeat or ask for a longer lease_s",
        ) from exc


# ask's and tell's own worker threads: a plain executor hop costs less than anyio's
# (measured: about 0.3-1 ms of server CPU per ask+tell pair, and lower latency). With more
# than a few threads on SQLite the others only contend for the GIL and the write turn
# (2 threads answered 5-15% more pairs/s than 32). Elsewhere the database's round trips
# overlap, so more threads wait on it at once.
THREADS = {"sqlite": 2}
DEFAULT_THREADS = 32
# On SQLite the work runs on the event loop itself when the write turn is free within this
# many seconds (storage/_sqlite.py: unless_waiting), and on a thread only when it is not.
# SQLite writes one transaction at a time anyway, and the database is a local file, so a
# thread buys no overlap there; what it costs is the GIL handed back and forth between the
# loop and the threads at every SQLite call (8 clients, random sampler, 2 cores: 1.5-1.6x
# the pairs/s of 2 threads, 3.8-4.0 ms of server CPU per pair instead of 6; TPE 1.2-1.3x,
# ask p99 lower with both). Elsewhere a round trip to the server would stall the loop.
INLINE_TURN_WAIT_S = {"sqlite": 0.003}


class AskCosts:
    """The CPU time of each study's last ask, to keep the asks of slow samplers off the event loop.

    An ask on the loop holds it for as long as its sampler works (a Gaussian process,
    TPE over tens of thousands of trials: hundreds of ms), and every request that comes
    meanwhile waits; on a thread the interpreter interleaves them every few ms. So a
    study whose last ask took more than ``LIMIT_S`` of CPU asks on a thread; thread
    CPU time, not wall time, so that waiting for the GIL there does not keep it there.
    """

    LIMIT_S = 0.05  # TPE at 3,000 trials: 22-25 ms per ask
    MAX_STUDIES = 10_000

    def __init__(self) -> None:
        self._cpu_s: dict[str, float] = {}

    def inline(self, name: str) -> bool:
        """Whether the next ask of study ``name`` may run on the event loop."""
        return self._cpu_s.get(name, 0.0) <= self.LIMIT_S

    def record(self, name: str, cpu_s: float) -> None:
        """Note what an ask of study ``name`` cost (only asks that succeeded: names of real studies)."""
        if len(self._cpu_s) >= self.MAX_STUDIES and name not in self._cpu_s:
            self._cpu_s.clear()
        self._cpu_s[name] = cpu_s


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def worker_threads(storage: Storage) -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run ask's and tell's database work for a service on ``storage`` (shared by the apps
    of one process that need as many, so that apps made and dropped, as in tests, leave no idle threads behind)."""
    n = THREADS.get(storage.dialect, DEFAULT_THREADS)
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = concurrent.futures.ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="studyhall-service"
            )
        return pool


async def _database_work(pool: concurrent.futures.Executor, fn: Callable[[], T], inline_wait_s: float | None) -> T:
    """``fn()`` right here if ``inline_wait_s`` is set and its first write turn comes within it, else on a thread
    of ``pool`` in a copy of this task's context (as ``run_in_threadpool`` does)."""
    if inline_wait_s is not None:
        try:
            with unless_waiting(inline_wait_s):
                return fn()
        except WouldWait:
            pass  # nothing was written: the same work, from the start, on a thread that may wait
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, ctx.run, fn)


def add_trial_routes(api: APIRouter, studies: Studies) -> None:
    """Read trials and their distributions; queue parameters for the next ask."""

    @api.get("/studies/{name}/trials", response_model=m.TrialsPage, responses=errors(404, 422))
    def list_trials(
        name: StudyName,
        state: m.TrialStateName | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=m.MAX_TRIAL_NUMBER)] = 0,
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


def add_health_routes(app: FastAPI, st: Storage, metrics: Metrics) -> None:
    """/healthz (no token needed) and the Prometheus /metrics, outside /v1."""

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
