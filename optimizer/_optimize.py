"""``Study.optimize``: trials run in a ``bridge.WorkerPool``; only this process touches the storage.

::

    optimize()                                                    pool worker
    ├─ study.retries = retries; fail_stale_trials()  (again every heartbeat)
    ├─ while the budget allows (n_trials, timeout, max_total_trials) and < workers in flight:
    │    study._ask ─> optuna.Trial ─> TrialProxy
    │    pool.submit(run_trial, TrialJob, on_call=proxy.handle) ──────> RemoteTrial(objective)
    │         proxy.handle: suggest_* / report / should_prune  <─call── (answered from storage)
    ├─ wait(first completed) <──── TrialOutcome | TaskTimeout | WorkerCrashed
    │    study.tell(value | scores, metrics, user_attrs)  or  FAIL / PRUNED  (+ study.retry)
    └─ Ctrl-C: 2 s grace, FAIL "interrupted" for the rest, pool shut down, KeyboardInterrupt again

``workers=0`` runs each trial in this thread with the same RemoteTrial code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from bridge import PoolClosed, TaskTimeout, WorkerCrashed
from optimizer import events, services, trace
from optimizer._optimize_progress import make_progress
from optimizer._remote_trial import BOOT, RUNNER_FILE, TrialOutcome, TrialProxy, load_objective, make_job
from optimizer._trial_runner import run_trial
from optimizer._space import Space
from storage import InvalidRequest, Storage

if TYPE_CHECKING:
    from optimizer._study import Study

_log = logging.getLogger("studyhall.optimize")
GRACE_S = 2.0  # how long running trials may finish after Ctrl-C
_TICK_S = 0.2
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


@dataclass
class OptimizeReport:
    """What one ``optimize`` call did; the outcome counts are disjoint.

    ``best_value``/``best_params`` are the study's best after the call (single
    objective; None otherwise). ``interrupted`` counts trials failed by Ctrl-C.
    """

    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    crashed: int = 0
    pruned: int = 0
    interrupted: int = 0
    retried: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    @property
    def n_trials(self) -> int:
        """Trials this call finished, whatever their outcome."""
        return self.completed + self.failed + self.timed_out + self.crashed + self.pruned + self.interrupted

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {**asdict(self), "n_trials": self.n_trials}


@dataclass
class _Flight:
    number: int
    trial_id: int
    future: Future[dict[str, Any]] | None = None


class _Inline:
    """``workers=0``: each trial runs to its end inside ``submit``, in this thread."""

    capacity = 1

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def submit(self, job: dict[str, Any], proxy: TrialProxy) -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        with trace.scope(self.storage, trial=proxy.trial):  # trace.step() lands on this trial
            fut.set_result(run_trial(job, proxy.handle))
        return fut

    def close(self, exc: BaseException | None = None) -> None:
        pass


class _Pooled:
    """``workers=N``: a WorkerPool of N; its workers start while the parent reads the study."""

    def __init__(self, workers: int, trial_timeout: float | None, storage: Storage) -> None:
        from bridge import WorkerPool

        self.capacity = workers
        self.storage = storage
        self.pool = WorkerPool(min_workers=workers, max_workers=workers, task_timeout=trial_timeout)
        self.pool.__enter__()
        self._open = True

    def submit(self, job: dict[str, Any], proxy: TrialProxy) -> Future[dict[str, Any]]:
        # the objective's events and trace steps are written here, tied to the trial
        on_send = events.worker_sink(self.storage, proxy.trial)
        return self.pool.submit(BOOT, RUNNER_FILE, job, on_call=proxy.handle, on_send=on_send)

    def close(self, exc: BaseException | None = None) -> None:
        """Stop the workers; after an error, kill the running ones too (the pool's exit on error)."""
        if self._open:
            self._open = False
            self.pool.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


def optimize(
    study: Study,
    objective: Callable[..., Any] | str,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    trial_timeout: float | None = None,
    retries: int = 0,
    space: Space | None = None,
    progress: bool = True,
    max_total_trials: int | None = None,
    catch: tuple[type[BaseException], ...] = (Exception,),
) -> OptimizeReport:
    """Run ``objective`` on trials of ``study`` in ``workers`` subprocesses (0: in this thread).

    Args:
        objective: a callable taking an Optuna-style trial, or ``"package.module:function"``;
            it returns a float, per-example scores (a sequence), or an ``Evaluation``.
        n_trials: stop after this call finished this many trials (retries included).
        timeout: seconds after which no new trial starts.
        workers: trials in flight at once, each in its own worker process; 0 runs
            them in this thread (then ``trial_timeout`` is not available).
        trial_timeout: seconds a trial may run before its worker is killed (FAIL).
        retries: re-runs of a timed-out or crashed trial's parameters; also the
            study's policy for trials left stale by dead processes.
        space: parameters sampled up front (no round trip for their ``suggest_*``).
        progress: a progress bar on stderr when it is a terminal.
        max_total_trials: stop once the study as a whole (every process and host)
            has this many finished trials.
        catch: exceptions that fail a trial and let the run go on; any other stops
            asking, lets the running trials finish, and is raised here.

    Raises:
        InvalidRequest: a bad argument, or an objective that cannot reach a worker.
        KeyboardInterrupt: after Ctrl-C, once no trial of this call is left RUNNING.
    """
    _check(n_trials, "n_trials", 0)
    _check(max_total_trials, "max_total_trials", 1)
    _check(workers, "workers", 0, allow_none=False)
    _check(retries, "retries", 0, allow_none=False)
    for name, v in (("timeout", timeout), ("trial_timeout", trial_timeout)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise InvalidRequest(f"{name} must be a number of seconds > 0 (or None); got {v!r}")
    if workers == 0 and trial_timeout is not None:
        raise InvalidRequest("trial_timeout needs worker processes to kill; use workers >= 1")
    if not (isinstance(catch, tuple) and all(isinstance(c, type) and issubclass(c, BaseException) for c in catch)):
        raise InvalidRequest(f"catch must be a tuple of exception classes; got {catch!r:.80}")
    return _Run(study, objective, n_trials, timeout, workers, trial_timeout, retries, space, progress, max_total_trials, catch).run()


def _check(v: Any, name: str, low: int, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InvalidRequest(f"{name} must be an integer >= {low}{' (or None)' if allow_none else ''}; got {v!r}")


def _ship(obj: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:
        raise InvalidRequest(
            f"{what} cannot be pickled for the worker processes ({type(exc).__name__}: {exc}); "
            "pass 'package.module:function', or use workers=0 to run in this process"
        ) from exc


def _picklable_services() -> bytes | None:
    shipped, skipped = {}, []
    for name, service in services.snapshot().items():
        try:
            cloudpickle.dumps(service)
            shipped[name] = service
        except Exception:
            skipped.append(name)
    if skipped:  # logged, not warned: a process-wide registration must not break every run
        _log.warning("services %s cannot be pickled and are not available in pool workers", ", ".join(sorted(skipped)))
    return cloudpickle.dumps(shipped) if shipped else None  # None: workers need not import optimizer


class _Run:
    def __init__(
        self,
        study: Study,
        objective: Callable[..., Any] | str,
        n_trials: int | None,
        timeout: float | None,
        workers: int,
        trial_timeout: float | None,
        retries: int,
        space: Space | None,
        progress: bool,
        max_total_trials: int | None,
        catch: tuple[type[BaseException], ...],
    ) -> None:
        self.study, self.n_trials, self.timeout, self.workers = study, n_trials, timeout, workers
        self.trial_timeout, self.retries, self.max_total, self.catch = trial_timeout, retries, max_total_trials, catch
        fn = load_objective(objective)  # fails fast on a bad "module:function"
        if workers == 0:
            self.objective: str | bytes | Callable[..., Any] = fn
            self.services = None
        else:
            self.objective = objective if isinstance(objective, str) else _ship(objective, "the objective")
            self.services = _picklable_services()
        self.dists = {} if space is None else study._remember_space(space)
        self.fixed = space is not None
        self.lock = threading.RLock()
        self.report = OptimizeReport()
        self.inflight: dict[int, _Flight] = {}
        self.finished = 0
        self.stop: BaseException | None = None
        self.start = time.monotonic()
        total = n_trials if n_trials is not None else max_total_trials
        self.bar = make_progress(progress, total, study.name)

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> OptimizeReport:
        st = self.study.storage
        self.backend: _Inline | _Pooled = _Inline(st) if self.workers == 0 else _Pooled(self.workers, self.trial_timeout, st)
        try:
            self.study.retries = self.retries
            self.study.fail_stale_trials()
            dirs = self.study.directions
            self.maximize = (dirs[0] == "maximize") if len(dirs) == 1 else None
            self._best()
            self._loop()
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            self.backend.close()
            self.report.elapsed_s = time.monotonic() - self.start
            self.bar.close(self.report)
        self._best()
        if self.stop is not None:
            raise self.stop
        return self.report

    def _loop(self) -> None:
        while True:
            while len(self.inflight) < self.backend.capacity and self._may_ask():
                self._start()
            if not self.inflight:
                if not self._others_running():
                    return
                time.sleep(_TICK_S)  # the study's last trials run elsewhere; they finish or go stale
            else:
                futures = {fl.future: fl for fl in self.inflight.values() if fl.future is not None}
                done, _ = wait(futures, timeout=_TICK_S, return_when=FIRST_COMPLETED)
                for fut in done:
                    self._finish(futures[fut])
            with self.lock:
                self.study._maybe_fail_stale()
            self.bar.update(self.report)

    def _time_left(self) -> bool:
        return self.timeout is None or time.monotonic() - self.start < self.timeout

    def _may_ask(self) -> bool:
        if self.stop is not None or not self._time_left():
            return False
        if self.n_trials is not None and self.finished + len(self.inflight) >= self.n_trials:
            return False
        if self.max_total is not None:
            finished, running = self._counts()
            return finished + len(running) < self.max_total
        return True

    def _others_running(self) -> bool:
        """With ``max_total_trials``: whether to wait for other processes' last trials."""
        if self.max_total is None or self.stop is not None or not self._time_left():
            return False
        if self.n_trials is not None and self.finished >= self.n_trials:
            return False
        finished, running = self._counts()
        return finished < self.max_total and bool(set(running) - self.study.storage.heartbeat.tracked())

    def _counts(self) -> tuple[int, list[int]]:
        from optuna.storages._rdb import models

        t = models.TrialModel.__table__
        sid = self.study._study_id

        def read(conn: sa.Connection) -> tuple[int, list[int]]:
            finished = conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.study_id == sid, t.c.state.in_(_FINISHED))
            ).scalar_one()
            running = conn.execute(sa.select(t.c.trial_id).where(t.c.study_id == sid, t.c.state == TrialState.RUNNING))
            return int(finished), [r[0] for r in running]

        return self.study.storage.run(read)

    def _start(self) -> None:
        with self.lock:
            handle = self.study._ask(self.dists)
            flight = self.inflight[handle.number] = _Flight(handle.number, handle.trial_id)
            trial = optuna.Trial(self.study.optuna, handle.trial_id)
            attrs = trial.user_attrs
        job = make_job(
            handle.number,
            self.objective,
            params=handle.params if self.fixed else {},
            user_attrs=attrs,
            n_objectives=len(self.study.directions),
            services=self.services,
            catch=self.catch,
        )
        flight.future = self.backend.submit(job, TrialProxy(trial, self.lock))

    # ---- outcomes ----------------------------------------------------------------------

    def _finish(self, fl: _Flight) -> None:
        self.inflight.pop(fl.number, None)
        self.finished += 1
        assert fl.future is not None
        try:
            out = TrialOutcome.from_dict(fl.future.result())
        except TaskTimeout:
            self.report.timed_out += 1
            msg = f"timed out: the trial ran past trial_timeout={self.trial_timeout}s; its worker was killed and replaced"
            self._retry(self._fail(fl, msg, "timeout"))
        except WorkerCrashed as exc:
            self.report.crashed += 1
            how = f"was killed by signal {exc.signal}" if exc.signal else f"exited with code {exc.exitcode}"
            msg = (
                f"crashed: its worker process (pid {exc.pid}) {how} while running the trial and was "
                "replaced; likely an os._exit, a signal, a native crash or memory exhaustion"
            )
            self._retry(self._fail(fl, msg, "crash"))
        except PoolClosed as exc:
            self.report.failed += 1
            self._fail(fl, f"{type(exc).__name__}: {exc}", "pool")
            raise
        except Exception as exc:  # the pool could not run it, e.g. an unpicklable outcome
            self.report.failed += 1
            self._fail(fl, f"{type(exc).__name__}: {exc}", "error")
        else:
            self._tell(fl, out)

    def _tell(self, fl: _Flight, out: TrialOutcome) -> None:
        kw: dict[str, Any] = {"metrics": out.metrics, "user_attrs": out.user_attrs}
        if out.status == "complete":
            try:
                with self.lock:
                    frozen = self.study.tell(fl.number, out.value, values=out.values, scores=out.scores, **kw)
                self.report.completed += 1
                self._note_best(frozen)
                return
            except InvalidRequest as exc:
                if self._already_finished(fl):
                    self.report.failed += 1
                    return
                out.status, out.error = "fail", f"InvalidRequest: the objective's result was rejected: {exc}"
        if out.status == "pruned":
            self.report.pruned += 1
            try:
                with self.lock:
                    self.study.tell(fl.number, state="pruned", **kw)
            except InvalidRequest:
                if not self._already_finished(fl):
                    with self.lock:
                        self.study.tell(fl.number, state="pruned")
            return
        self.report.failed += 1
        self._fail(fl, out.error or "failed", "error", out.traceback, **kw)
        if out.exception is not None and self.stop is None:
            self.stop = _rebuild(out)

    def _fail(self, fl: _Flight, error: str, failure: str, tb: str | None = None, **kw: Any) -> Any:
        attrs = {**kw.pop("user_attrs", {}), "failure": failure}
        if tb:
            attrs["traceback"] = tb
        with self.lock:
            try:
                return self.study.tell(fl.number, state="fail", error=error, user_attrs=attrs, **kw)
            except InvalidRequest:
                if self._already_finished(fl):
                    return None
                # bad telemetry (e.g. a non-finite sample) must not keep the trial RUNNING
                return self.study.tell(fl.number, state="fail", error=error, user_attrs={"failure": failure})

    def _already_finished(self, fl: _Flight) -> bool:
        # another process may have failed it as stale (its heartbeat was late)
        if not self.study.trial(fl.number).state.is_finished():
            return False
        self.study.storage.heartbeat.discard(fl.trial_id)
        return True

    def _retry(self, frozen: Any) -> None:
        if frozen is not None:
            with self.lock:
                if self.study.retry(frozen, self.retries):
                    self.report.retried += 1

    def _abort(self, exc: BaseException) -> None:
        """Leave no trial of this call RUNNING: a short grace after Ctrl-C, then FAIL the rest."""
        if isinstance(exc, KeyboardInterrupt):
            deadline = time.monotonic() + GRACE_S
            try:
                while self.inflight and time.monotonic() < deadline:
                    futures = {fl.future: fl for fl in self.inflight.values() if fl.future is not None}
                    if not futures:
                        break
                    done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
                    for fut in done:
                        self._finish(futures[fut])
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: skip the grace
            except Exception:
                _log.warning("could not record a trial during shutdown", exc_info=True)
        try:
            self.backend.close(exc)  # kills what still runs, so nothing writes after the FAIL
        except Exception:
            _log.warning("worker pool shutdown failed", exc_info=True)
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"interrupted: optimize() stopped on {type(exc).__name__}: {exc}"
        for fl in list(self.inflight.values()):
            try:
                self._fail(fl, why, "interrupted")
                self.report.interrupted += 1
            except BaseException:  # keep failing the others, even on another Ctrl-C
                _log.warning("could not fail trial %s; it goes stale and is failed later", fl.number, exc_info=True)
        self.inflight.clear()

    def _note_best(self, frozen: Any) -> None:
        # a running best for the progress bar; _best() reads the study's at the end
        if self.maximize is None or frozen.value is None:
            return
        best = self.report.best_value
        if best is None or (frozen.value > best if self.maximize else frozen.value < best):
            self.report.best_value, self.report.best_params = float(frozen.value), dict(frozen.params)

    def _best(self) -> None:
        if len(self.study.directions) != 1:
            return
        try:
            best = self.study.best_trial
        except InvalidRequest:
            return
        self.report.best_value, self.report.best_params = float(best.value), dict(best.params)  # type: ignore[arg-type]


def _rebuild(out: TrialOutcome) -> BaseException:
    try:
        exc: BaseException = cloudpickle.loads(out.exception)  # type: ignore[arg-type]
    except Exception:
        exc = RuntimeError(out.error)
    if out.traceback:
        exc.add_note(f"raised by the objective (traceback from where it ran):\n{out.traceback}")
    return exc
