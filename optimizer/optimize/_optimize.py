"""``Study.optimize``: trials run in a ``bridge.WorkerPool``; only this process touches the storage.

::

    optimize()                                                    pool worker
    ├─ study.retries = retries; fail_stale_trials()  (again every heartbeat)
    ├─ while the budget allows (n_trials, timeout, max_total_trials) and < workers + 1 in flight:
    │    study._ask_trial ─> optuna.Trial ─> TrialProxy, job dict (_remote_trial)
    │         (max_total_trials: the storage creates a new trial only while the study has fewer
    │         trials besides retries, under the study's lock: exact across hosts; queued trials
    │         and retries are still claimed, and a full study's hosts wait for the others' last
    │         trials, which finish or go stale and are retried here)
    │    pool.submit(run_trial, job, on_call=proxy.handle) ───────────> run_trial (_trial_runner)
    │         (one trial waits in the pool's queue, so a free worker never waits for an ask)
    │         on_send: its real start time                       <─send── "started"
    │         proxy.handle: suggest_* / report / should_prune  <─call── RemoteTrial(objective)
    │         (a worker's call goes before the parent's own ask and tell: CallsFirst)
    ├─ wait(first completed) <──── outcome dict | TaskTimeout | WorkerCrashed
    │    study.tell(value | scores, metrics, user_attrs)  or  FAIL / PRUNED  (+ study.retry;
    │    _outcomes.py)
    ├─ timeout or a stop: the queued trial goes back to the study's queue (WAITING), never run
    ├─ Ctrl-C: queued trial back to WAITING, 2 s grace, FAIL "interrupted" for the rest,
    │  pool shut down, KeyboardInterrupt again
    └─ the database out of reach (TransientStorageError): pool shut down, the trials left to go stale
       (another host fails and retries them), the error raised

``workers=0`` runs each trial in this thread with the same RemoteTrial code.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from datetime import datetime
from typing import TYPE_CHECKING, Any

from studyhall.optimizer import _optuna
from studyhall.optimizer.optimize._backends import Inline, Interrupts, Pooled
from studyhall.optimizer.optimize._outcomes import Flight, Outcomes
from studyhall.optimizer.optimize._progress import make_progress
from studyhall.optimizer.optimize._remote_trial import (
    CallsFirst,
    TrialProxy,
    load_objective,
    make_job,
    ship_objective,
    ship_services,
)
from studyhall.optimizer.optimize._report import OptimizeReport, Options
from studyhall.optimizer.study._space import Space
from studyhall.storage import StudyhallError, TransientStorageError
from studyhall.storage._studies import running_and_waiting
from studyhall.storage.rdb import TotalReached

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study

_log = logging.getLogger("studyhall.optimize")
GRACE_S = 2.0  # how long running trials may finish after Ctrl-C
_TICK_S = 0.2


def optimize(
    study: Study,
    objective: Callable[..., Any] | str,
    *,
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
    """``study.optimize(...)``: its arguments and what it raises are documented on ``Study.optimize``."""
    opts = Options(n_trials, timeout, workers, trial_timeout, retries, progress, max_total_trials, catch)
    return _Run(study, objective, space, opts).run()


class _Run:
    def __init__(self, study: Study, objective: Callable[..., Any] | str, space: Space | None, opts: Options) -> None:
        self.study, self.opts = study, opts
        fn = load_objective(objective)  # fails fast on a bad "module:function"
        self.objective: str | bytes | Callable[..., Any] = fn if opts.workers == 0 else ship_objective(objective)
        self.services = None if opts.workers == 0 else ship_services()
        self.dists = {} if space is None else study._remember_space(space)
        self.fixed = space is not None
        self.lock = CallsFirst()  # one thread at a time on the sampler and the storage
        self.turns: deque[tuple[float, float]] = deque(maxlen=32)  # (waiting, whole) time of recent loop turns
        self.interrupts = Interrupts()
        self.report = OptimizeReport()
        self.outcomes = Outcomes(study, self.lock, self.report, opts.trial_timeout, opts.retries)
        self.inflight: dict[int, Flight] = {}
        self.finished = 0
        self.full = False  # the study reached max_total_trials: only queued trials and retries are left to run
        self.stop: BaseException | None = None
        self.start = time.monotonic()
        total = opts.n_trials if opts.n_trials is not None else opts.max_total_trials
        self.bar = make_progress(opts.progress, total, study.name)

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> OptimizeReport:
        st, opts = self.study.storage, self.opts
        self.backend: Inline | Pooled
        if opts.workers == 0:
            self.backend = Inline(st)
        else:
            assert not callable(self.objective)  # shipped for the workers in __init__
            self.backend = Pooled(opts.workers, opts.trial_timeout, st, self.objective)
        try:
            self.interrupts.__enter__()
            self.study.retries = opts.retries
            self.study.fail_stale_trials()
            self.outcomes.best()
            self._loop()
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            self.interrupts.__exit__()
            self.backend.close()
            self.report.elapsed_s = time.monotonic() - self.start
            self.bar.close(self.report)
        self.outcomes.best()
        if self.stop is not None:
            raise self.stop
        return self.report

    def _loop(self) -> None:
        while True:
            turn, waited = time.monotonic(), 0.0
            if self.stop is not None or not self._time_left():
                self._requeue_queued()
            self._fill()
            if not self.inflight:
                if not self._others_running():
                    return
                time.sleep(_TICK_S)  # the study's last trials run elsewhere; they finish or go stale
            else:
                running = {
                    fl.future: fl for fl in self.inflight.values() if fl.future is not None and not fl.future.done()
                }
                t0 = time.monotonic()
                wait(running, timeout=self._tick(), return_when=FIRST_COMPLETED)
                waited = time.monotonic() - t0
                done = [fl for fl in self.inflight.values() if fl.future is not None and fl.future.done()]
                if done:  # the worker that finished starts the trial queued ahead: its suggest_* calls come now
                    self.lock.expect_calls()
                # A crash or timeout is told first, so that its retry is the next trial asked;
                # a result is told after the free workers got new trials, so they do not idle meanwhile.
                for fl in done:
                    if fl.future.exception() is not None:  # type: ignore[union-attr]
                        self._finish(fl)
                self._fill(most=len(done))
                for fl in done:
                    if fl.number in self.inflight:
                        self._finish(fl)
            with self.lock:
                self.study._maybe_fail_stale()
            self.bar.update(self.report)
            self._pace(waited, time.monotonic() - turn)

    def _pace(self, waited: float, turn: float) -> None:
        # Mostly waiting for results: the parent can let workers' calls go first.
        # Mostly asking and telling: it is the bottleneck and must not wait for them.
        self.turns.append((waited, turn))
        self.lock.patient = sum(w for w, _ in self.turns) > 0.5 * sum(t for _, t in self.turns)

    def _fill(self, most: int | None = None) -> None:
        """Ask and submit trials while a worker would idle: at most ``most``, else until a result comes.

        A result waiting to be told ends the asking: when asks are slow (a sampler
        over many trials), asking on would leave finished trials RUNNING and the
        sampler blind to their values until the study's last ask.
        """
        asked = 0
        while self._busy() < self.backend.capacity + self.backend.ahead and self._may_ask():
            if most is not None and asked >= most:
                return
            if not self._start():
                return
            asked += 1
            if most is None and self._result_waiting():
                return

    def _result_waiting(self) -> bool:
        return any(fl.future is not None and fl.future.done() for fl in self.inflight.values())

    def _busy(self) -> int:
        if isinstance(self.backend, Inline):  # its trials are done when submitted; tell before the next
            return len(self.inflight)
        return sum(fl.future is None or not fl.future.done() for fl in self.inflight.values())

    def _tick(self) -> float:
        # wake at the timeout itself: the trial queued ahead must not start after it
        left = None if self.opts.timeout is None else self.start + self.opts.timeout - time.monotonic()
        return _TICK_S if left is None or left <= 0 else min(_TICK_S, left)

    def _time_left(self) -> bool:
        return self.opts.timeout is None or time.monotonic() - self.start < self.opts.timeout

    def _may_ask(self) -> bool:
        if self.stop is not None or not self._time_left():
            return False
        if self.opts.n_trials is not None and self.finished + len(self.inflight) >= self.opts.n_trials:
            return False
        return not self.full or self._counts()[1] > 0  # full: only a queued trial or retry is left to take

    def _others_running(self) -> bool:
        """With ``max_total_trials``: whether to wait for other processes' last trials (and their retries)."""
        if self.opts.max_total_trials is None or self.stop is not None or not self._time_left():
            return False
        if self.opts.n_trials is not None and self.finished >= self.opts.n_trials:
            return False
        running, waiting = self._counts()
        return waiting > 0 or bool(set(running) - self.study.storage.heartbeat.tracked())

    def _counts(self) -> tuple[list[int], int]:
        return running_and_waiting(self.study.storage, self.study._study_id)

    def _start(self) -> bool:
        """Ask for a trial and submit it; False when the study reached its total (nothing asked)."""
        with self.interrupts.shield(), self.lock:  # a trial Optuna created is always in inflight
            try:
                trial = self.study._ask_trial(self.dists, total=self.opts.max_total_trials)
            except TotalReached:
                self.full = True
                return False
            flight = self.inflight[trial.number] = Flight(trial.number, _optuna.trial_id(trial))
            attrs = trial.user_attrs
        job = make_job(
            trial.number,
            self.objective,
            params=dict(trial.params) if self.fixed else {},
            user_attrs=attrs,
            n_objectives=len(self.study.directions),
            services=self.services,
            catch=self.opts.catch,
            study=self.study.name,
        )
        flight.future = self.backend.submit(job, TrialProxy(trial, self.lock), self._on_start(trial.number))
        return True

    def _on_start(self, number: int) -> Callable[[float], None]:
        def started(at: float) -> None:  # on a lane thread: when the worker began the trial
            self.study._started[number] = datetime.fromtimestamp(at)

        return started

    def _requeue_queued(self) -> None:
        """Give trials still waiting in the pool's queue back to the study (WAITING): they never ran."""
        for fl in list(self.inflight.values()):
            if fl.future is not None and fl.future.cancel():
                self.inflight.pop(fl.number, None)
                with self.lock:
                    self.study._requeue(fl.trial_id)

    # ---- ending ------------------------------------------------------------------------

    def _finish(self, fl: Flight) -> None:
        with self.interrupts.shield():  # popped from inflight means told
            self.inflight.pop(fl.number, None)
            self.finished += 1
            stop = self.outcomes.settle(fl)
        if stop is not None and self.stop is None:
            self.stop = stop

    def _abort(self, exc: BaseException) -> None:
        """Leave no trial of this call RUNNING: a short grace after Ctrl-C, then FAIL the rest.

        A trial still queued in the pool never ran: it goes back to the study's queue.
        """
        try:
            with self.interrupts.shield():
                self._requeue_queued()
        except BaseException as failure:  # the trial stays RUNNING in inflight and is failed below
            _log.warning(
                "could not give queued trials back (%s)", failure, exc_info=not isinstance(failure, StudyhallError)
            )
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
        if isinstance(exc, TransientStorageError):
            # The database went out of reach (a cut link, an outage): the trials were cut short by
            # the infrastructure, not by anyone's choice. Leave them to go stale, so that another
            # host fails them as stale and retries them, rather than FAIL them "interrupted" for
            # good in the moment the database may be back.
            for fl in self.inflight.values():
                self.study.storage.heartbeat.discard(fl.trial_id)
            if self.inflight:
                _log.warning("trials %s are left to go stale and be retried elsewhere", sorted(self.inflight))
            self.inflight.clear()
            return
        why = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt)
            else f"interrupted: optimize() stopped on {type(exc).__name__}: {exc}"
        )
        for fl in list(self.inflight.values()):
            try:
                with self.interrupts.shield():
                    self.outcomes.fail(fl, why, "interrupted")
                    self.report.interrupted += 1
            except BaseException as failure:  # keep failing the others, even on another Ctrl-C
                # No beat from here any more, and not detached at exit: it goes stale and
                # another process fails and retries it (detached, it would stay RUNNING).
                self.study.storage.heartbeat.discard(fl.trial_id)
                _log.warning(
                    "could not fail trial %s (%s); it goes stale and is failed elsewhere",
                    fl.number,
                    failure,
                    exc_info=not isinstance(failure, StudyhallError),  # an unreachable database needs no traceback
                )
        self.inflight.clear()
