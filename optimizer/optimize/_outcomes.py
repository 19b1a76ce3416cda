"""What came of each trial of ``optimize``: told to the study, counted in the report, retried per policy.

::

    a trial's future ──> outcome dict ──> study.tell(value | scores | pruned | fail, metrics, user_attrs)
                    ├──> TaskTimeout / WorkerCrashed ──> FAIL "timed out" / "crashed" ──> study.retry
                    ├──> PoolClosed ──> FAIL, raised again (the run cannot go on)
                    └──> anything else the pool raised (e.g. an unpicklable outcome) ──> FAIL
    an objective's exception outside ``catch`` ──> FAIL, and handed back so that optimize raises it
    TrialOwnershipLost (this host stalled; another took the trial over) ──> dropped: counted as
                    ``lost``, not told, not retried (the new owner runs it)

A result the study rejects (a non-finite value, bad telemetry) fails the trial
instead of leaving it RUNNING; a trial another process already failed as stale is
counted, not told twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
from optuna.trial import FrozenTrial

from studyhall.bridge import PoolClosed, TaskTimeout, WorkerCrashed
from studyhall.optimizer.optimize._remote_trial import CallsFirst, TrialOutcome
from studyhall.optimizer.optimize._report import OptimizeReport
from studyhall.storage import InvalidRequest, TrialOwnershipLost

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study

_log = logging.getLogger("studyhall.optimize")


@dataclass
class Flight:
    """A trial of this call in flight: its number, id, and the future of its outcome once submitted."""

    number: int
    trial_id: int
    future: Future[dict[str, Any]] | None = None


class Outcomes:
    """Tells ``study`` what came of each trial (under ``lock``) and counts it in ``report``."""

    def __init__(
        self, study: Study, lock: CallsFirst, report: OptimizeReport, trial_timeout: float | None, retries: int
    ) -> None:
        self.study, self.lock, self.report = study, lock, report
        self.trial_timeout, self.retries = trial_timeout, retries
        dirs = study.directions
        self._maximize = (dirs[0] == "maximize") if len(dirs) == 1 else None

    def settle(self, fl: Flight) -> BaseException | None:
        """Tell the study what came of a finished trial; the objective's exception if it must stop the run."""
        try:
            return self._settle(fl)
        except TrialOwnershipLost as exc:
            # This process stalled past the grace period and another one took the trial over:
            # whatever ran here is dropped (the new owner's run is the trial's), and not retried.
            self.report.lost += 1
            self.study.storage.heartbeat.discard(fl.trial_id)
            _log.warning("trial %s dropped: %s", fl.number, exc)
            return None

    def _settle(self, fl: Flight) -> BaseException | None:
        assert fl.future is not None
        try:
            out = TrialOutcome.from_dict(fl.future.result())
        except TaskTimeout:
            msg = (
                f"timed out: the trial ran past trial_timeout={self.trial_timeout}s; its worker was killed and replaced"
            )
            frozen = self.fail(fl, msg, "timeout")
            self.report.timed_out += 1  # counted once told: a lost trial is counted as lost only
            self._retry(frozen)
        except WorkerCrashed as exc:
            how = f"was killed by signal {exc.signal}" if exc.signal else f"exited with code {exc.exitcode}"
            msg = (
                f"crashed: its worker process (pid {exc.pid}) {how} while running the trial and was "
                "replaced; likely an os._exit, a signal, a native crash or memory exhaustion"
            )
            frozen = self.fail(fl, msg, "crash")
            self.report.crashed += 1
            self._retry(frozen)
        except PoolClosed as exc:
            self.fail(fl, f"{type(exc).__name__}: {exc}", "pool")
            self.report.failed += 1
            raise
        except Exception as exc:  # the pool could not run it, e.g. an unpicklable outcome
            self.fail(fl, f"{type(exc).__name__}: {exc}", "error")
            self.report.failed += 1
        else:
            return self._tell(fl, out)
        return None

    def _tell(self, fl: Flight, out: TrialOutcome) -> BaseException | None:
        kw: dict[str, Any] = {"metrics": out.metrics, "user_attrs": out.user_attrs}
        if out.status == "complete":
            try:
                with self.lock:
                    frozen = self.study.tell(fl.number, out.value, values=out.values, scores=out.scores, **kw)
                self.report.completed += 1
                self._note_best(frozen)
                return None
            except InvalidRequest as exc:
                if self._already_finished(fl):
                    self.report.failed += 1
                    return None
                out.status, out.error = "fail", f"InvalidRequest: the objective's result was rejected: {exc}"
        if out.status == "pruned":
            try:
                with self.lock:
                    self.study.tell(fl.number, state="pruned", **kw)
            except InvalidRequest:
                if not self._already_finished(fl):
                    with self.lock:
                        self.study.tell(fl.number, state="pruned")
            self.report.pruned += 1
            return None
        self.fail(fl, out.error or "failed", "error", out.traceback, **kw)
        self.report.failed += 1
        return None if out.exception is None else _rebuild(out)

    def fail(self, fl: Flight, error: str, failure: str, tb: str | None = None, **kw: Any) -> FrozenTrial | None:
        """Tell the trial FAIL with ``error``; ``failure`` names the kind (timeout, crash, error, interrupted)."""
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

    def _already_finished(self, fl: Flight) -> bool:
        # another process may have failed it as stale (its heartbeat was late)
        if not self.study.trial(fl.number).state.is_finished():
            return False
        self.study.storage.heartbeat.discard(fl.trial_id)
        return True

    def _retry(self, frozen: FrozenTrial | None) -> None:
        if frozen is not None:
            with self.lock:
                if self.study.retry(frozen, self.retries):
                    self.report.retried += 1

    def _note_best(self, frozen: FrozenTrial) -> None:
        # a running best for the progress bar; _best() reads the study's at the end
        if self._maximize is None or frozen.value is None:
            return
        best = self.report.best_value
        if best is None or (frozen.value > best if self._maximize else frozen.value < best):
            self.report.best_value, self.report.best_params = float(frozen.value), dict(frozen.params)

    def best(self) -> None:
        """Put the study's best value and parameters (single objective) in the report."""
        if len(self.study.directions) != 1:
            return
        try:
            best = self.study.best_trial
        except InvalidRequest:
            return
        self.report.best_value, self.report.best_params = float(best.value), dict(best.params)  # type: ignore[arg-type]


def _rebuild(out: TrialOutcome) -> BaseException:
    try:
        exc: BaseException = cloudpickle.loads(out.exception)
    except Exception:
        exc = RuntimeError(out.error)
    if out.traceback:
        exc.add_note(f"raised by the objective (traceback from where it ran):\n{out.traceback}")
    return exc
