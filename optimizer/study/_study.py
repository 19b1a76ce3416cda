"""Study: create/ask/tell on an Optuna study, with distributions and no stuck trials.

::

    ask ──> claim a WAITING trial, or sample in memory and write the trial with its
            parameters and first beat in one transaction ──> heartbeat.add ──> TrialHandle
    tell ─> read the running trial ──> check_tell (_tell.py; nothing written on bad input)
            ──> sampler.after_trial ──> state + values + user_attrs + telemetry rows + note
            (one transaction) ──> heartbeat.discard
    a trial whose process died (no heartbeat) ──> FAIL and retry, or back to the queue
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer import _optuna
from studyhall.optimizer.study._space import Space, check_params, space_from_json, space_to_json, to_distributions
from studyhall.optimizer.study._summary import Summary
from studyhall.optimizer.study._tell import Told, check_tell, frozen_after, parse_state
from studyhall.optimizer.telemetry._notes import before_tell
from studyhall.optimizer.telemetry._registry import after_tell
from studyhall.optimizer.telemetry._study import study_metrics
from studyhall.storage import InvalidRequest, Storage, StudyNotFound, TrialNotFound, retrying
from studyhall.storage._trials import (
    InTransaction,
    TrialWrite,
    finish_trial,
    in_order,
    read_trial_metrics,
    requeue_trial,
)

if TYPE_CHECKING:
    from studyhall.optimizer.optimize._report import OptimizeReport
    from studyhall.optimizer.telemetry._compare import Comparison
    from studyhall.optimizer.telemetry._selection import Selection
    from studyhall.optimizer.telemetry._study import StudyMetrics

SPACE_ATTR = "studyhall:space"
RETRIES_ATTR = "studyhall:retries"
SAMPLER_ATTR = "studyhall:sampler"
_MAX_CACHED_IDS = 100_000  # number -> trial id of asked trials, a cache (tell reads the database without it)


@dataclass(frozen=True)
class TrialHandle:
    """A trial handed out by ``ask``: its number and the parameters to evaluate."""

    number: int
    params: dict[str, Any]
    trial_id: int = field(default=-1, repr=False, compare=False)
    study: str = field(default="", repr=False, compare=False)  # the study that asked for it


class Study:
    """One optimization study: ask for trials, tell their results, read what was learned.

    Get one from :meth:`optimizer.Orchestrator.create_study` or ``load_study``.

    Example:
        >>> study = Orchestrator().create_study("qa", direction="maximize")  # doctest: +SKIP
        >>> t = study.ask({"x": Float(0, 1)})  # doctest: +SKIP
        >>> study.tell(t, scores=[1, 0, 1])  # doctest: +SKIP
    """

    def __init__(self, storage: Storage, study: optuna.Study) -> None:
        self.storage = storage
        self.optuna = study
        self.name: str = study.study_name
        self._study_id = _optuna.study_id(study)
        self._last_stale_check = 0.0
        self._space_json: dict[str, str] | None = None
        self._ids: dict[int, int] = {}  # number -> trial id of the trials this object asked for
        # number -> when it really started, if later than its ask (optimize asks one ahead)
        self._started: dict[int, datetime] = {}

    def __repr__(self) -> str:
        return f"Study({self.name!r}, directions={self.directions})"

    # ---- facts -------------------------------------------------------------------------

    @property
    def directions(self) -> list[str]:
        """``"maximize"``/``"minimize"`` for each objective."""
        return [d.name.lower() for d in self.optuna.directions]

    @property
    def retries(self) -> int:
        """How many times a crashed, hung or stale trial is re-run with the same parameters."""
        return int(self._system_attrs().get(RETRIES_ATTR, 0))

    @retries.setter
    def retries(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidRequest(f"retries must be an integer >= 0; got {n!r:.40}")
        self.storage.optuna.set_study_system_attr(self._study_id, RETRIES_ATTR, int(n))

    def _system_attrs(self) -> dict[str, Any]:
        return self.storage.optuna.get_study_system_attrs(self._study_id)

    @property
    def space(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The last search space given to ``ask`` by any process (as Optuna distributions)."""
        return space_from_json(self._system_attrs().get(SPACE_ATTR, {}))

    @property
    def best_trial(self) -> FrozenTrial:
        """The best finished trial (single-objective studies)."""
        self._single_objective("best_trial")
        try:
            return self.optuna.best_trial
        except ValueError as exc:
            raise InvalidRequest(f"study {self.name!r} has no completed trial yet; tell one first") from exc

    @property
    def best_value(self) -> float:
        """The best objective value so far (single-objective studies)."""
        return float(self.best_trial.value)  # type: ignore[arg-type]

    @property
    def best_params(self) -> dict[str, Any]:
        """The parameters of the best trial (single-objective studies)."""
        return dict(self.best_trial.params)

    @property
    def best_trials(self) -> list[FrozenTrial]:
        """The Pareto front (multi-objective studies), or the best trial in a list."""
        return list(self.optuna.best_trials)

    def trials(self, states: Sequence[str | TrialState] | None = None) -> list[FrozenTrial]:
        """Every trial (Optuna FrozenTrials), optionally only those in ``states``."""
        st = None if states is None else tuple(parse_state(s, told=False) for s in states)
        return self.optuna.get_trials(deepcopy=False, states=st)

    def trial(self, number: int) -> FrozenTrial:
        """One trial by number; TrialNotFound if there is none."""
        return self.storage.optuna.get_trial(self._trial_id(number))

    def metrics(self, name: str = "score") -> StudyMetrics:
        """The study's distributions: trial values, ``name`` and LLM latency pooled over trials."""
        return study_metrics(self, name)

    def trial_metrics(self, number: int) -> dict[str, Summary]:
        """Every distribution stored for trial ``number`` (``score``, ``llm.latency_s``, ...), with the mean's 95% CI."""
        rows = read_trial_metrics(self.storage, self._trial_id(number))
        return {name: Summary.from_dict(row) for name, row in rows.items()}

    def compare(self, a: int | str, b: int | str, metric: str = "score") -> Comparison:
        """Is A better than B? The mean difference of ``metric``, its 95% interval and a p-value.

        ``a``/``b``: trial numbers, ``"full:N"`` (MiproLoop's Nth full evaluation) or
        ``"selected"``. Where both scored the same examples (by example id, else by
        position when n is equal) a paired t-test on the per-example differences;
        otherwise Welch's unpaired t-test, and ``note`` says the examples differ.

        Example:
            >>> print(study.compare(14, 22))  # doctest: +SKIP
            trial 14 - trial 22: score 0.9 - 0.8333 = +0.06667, 95% CI [-0.1, +0.23], p = 0.42 (paired t-test, ...
        """
        from studyhall.optimizer.telemetry._compare import compare

        return compare(self, a, b, metric)

    def select(
        self,
        params: Mapping[str, Any],
        *,
        scores: Sequence[float] | np.ndarray | Summary,
        trial: int | None = None,
        source: str = "",
        full_eval: int | None = None,
        metric: str = "score",
    ) -> Selection:
        """Record ``params`` as the study's answer, chosen by something other than the trial values.

        ``scores``: the per-example scores it was chosen on (or their Summary), kept as
        mean, 95% interval and n; ``trial``: a trial with these params. Stored in the
        study user attr ``studyhall:selection`` and shown at the top of the study's
        optuna-dashboard note; ``studyhall studies``/``trials``/``report`` show it too.
        MiproLoop calls this with its best full evaluation.
        """
        from studyhall.optimizer.telemetry._selection import select

        return select(self, params, scores=scores, trial=trial, source=source, full_eval=full_eval, metric=metric)

    @property
    def selection(self) -> Selection | None:
        """The study's recorded answer (:meth:`select`), or None; may differ from ``best_trial``, a minibatch's best."""
        from studyhall.optimizer.telemetry._selection import selection

        return selection(self)

    # ---- ask ---------------------------------------------------------------------------

    def ask(self, space: Space | None = None, *, keepalive: bool = True, lease_s: float | None = None) -> TrialHandle:
        """Start a trial and sample its parameters from ``space`` (or the study's last space).

        Enqueued parameters (``enqueue``, retries) are handed out first. Who keeps the
        trial RUNNING until it is told (from this process or any other):

        - default: this process heartbeats it. If the process exits normally the trial
          is *detached* and waits to be told; if it dies (kill -9, a crash) the trial
          goes stale after the grace period and is failed (and retried per ``retries``).
        - ``lease_s=...``: nobody beats; the trial is failed as stale a grace period
          after the lease ends unless told first.
        - ``keepalive=False``: the caller keeps it alive itself (the HTTP service's leases).
        """
        dists = self._remember_space(space)
        self._maybe_fail_stale()
        return self._ask(dists, keepalive, _check_lease(lease_s))

    def ask_batch(
        self, space: Space | None = None, k: int = 1, *, keepalive: bool = True, lease_s: float | None = None
    ) -> list[TrialHandle]:
        """``k`` trials at once; TPE's constant liar keeps them apart while they are pending."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidRequest(f"ask_batch needs k >= 1; got {k!r}")
        lease = _check_lease(lease_s)
        dists = self._remember_space(space)
        self._maybe_fail_stale()
        return [self._ask(dists, keepalive, lease) for _ in range(k)]

    def _ask_with(self, space: Space | None, k: int, extra: TrialWrite) -> list[TrialHandle]:
        """``k`` trials kept alive by the caller (``keepalive=False``), each written with ``extra(conn, trial_id)``.

        The HTTP service's ask: its lease rides in each trial's own transaction, so a
        trial never exists without it. Trials written before a failure stay written.
        """
        dists = self._remember_space(space)
        self._maybe_fail_stale()
        handles = []
        for _ in range(k):
            trial = self._ask_trial(dists, keepalive=False, extra=extra)
            handles.append(TrialHandle(trial.number, dict(trial.params), _optuna.trial_id(trial), self.name))
        return handles

    def _ask(
        self,
        dists: dict[str, optuna.distributions.BaseDistribution],
        keepalive: bool = True,
        lease_s: float | None = None,
    ) -> TrialHandle:
        trial = self._ask_trial(dists, keepalive and lease_s is None)
        if lease_s is not None:
            self.storage.optuna.detach_trials([_optuna.trial_id(trial)], lease_s=lease_s)
        return TrialHandle(trial.number, dict(trial.params), _optuna.trial_id(trial), self.name)

    def _ask_trial(
        self,
        dists: dict[str, optuna.distributions.BaseDistribution],
        keepalive: bool = True,
        total: int | None = None,
        extra: TrialWrite | None = None,
    ) -> optuna.Trial:
        # The live optuna.Trial: optimize() answers a worker's suggest_* calls with it.
        # No retry around it: each write inside retries itself, and a retried whole ask
        # is what used to leave orphan trials behind.
        with _optuna.quiet_ask(self.optuna):
            trial = _optuna.ask(self.optuna, self.storage.optuna, dists, heartbeat=keepalive, total=total, extra=extra)
        trial_id = _optuna.trial_id(trial)
        if len(self._ids) >= _MAX_CACHED_IDS:  # trials asked and never told (abandoned leases) must not pile up
            self._ids.clear()
        self._ids[trial.number] = trial_id
        if keepalive:
            self.storage.heartbeat.add(trial_id, beaten=True)
        return trial

    def _remember_space(self, space: Space | None) -> dict[str, optuna.distributions.BaseDistribution]:
        if space is None:
            return self.space
        dists = to_distributions(space)
        encoded = space_to_json(dists)
        if self._space_json is None:
            self._space_json = self._system_attrs().get(SPACE_ATTR)
        if self._space_json != encoded:  # persisted so other processes can check enqueues
            self.storage.optuna.set_study_system_attr(self._study_id, SPACE_ATTR, encoded)
            self._space_json = encoded
        return dists

    def enqueue(self, params: Mapping[str, Any], *, user_attrs: Mapping[str, Any] | None = None) -> None:
        """Queue ``params`` to be handed out by the next ``ask`` (checked against the known space)."""
        if not isinstance(params, Mapping):
            raise InvalidRequest(f"enqueue takes a dict of parameters; got {type(params).__name__}")
        dists = self.space
        if dists:
            check_params(params, dists)
        self.optuna.enqueue_trial(dict(params), user_attrs=dict(user_attrs or {}), skip_if_exists=False)

    # ---- tell --------------------------------------------------------------------------

    def tell(
        self,
        trial: TrialHandle | int,
        value: float | Sequence[float] | None = None,
        *,
        values: Sequence[float] | None = None,
        scores: Sequence[float] | np.ndarray | None = None,
        metrics: Mapping[str, Sequence[float]] | None = None,
        state: str | TrialState | None = None,
        error: str | None = None,
        user_attrs: Mapping[str, Any] | None = None,
    ) -> FrozenTrial:
        """Finish a trial with its value(s), per-example ``scores``, or a ``fail``/``pruned`` state.

        ``scores`` set the value to their mean and keep the distribution (Summary in
        ``trial_metrics`` and ``score.*`` user_attrs); ``metrics`` are summarised the
        same way under their own names. Bad input raises InvalidRequest and writes nothing.
        """
        return self._tell(
            trial,
            value,
            values=values,
            scores=scores,
            metrics=metrics,
            state=state,
            error=error,
            user_attrs=user_attrs,
        )

    def _tell(
        self,
        trial: TrialHandle | int,
        value: float | Sequence[float] | None = None,
        *,
        values: Sequence[float] | None = None,
        scores: Sequence[float] | np.ndarray | None = None,
        metrics: Mapping[str, Sequence[float]] | None = None,
        state: str | TrialState | None = None,
        error: str | None = None,
        user_attrs: Mapping[str, Any] | None = None,
        extra: InTransaction | None = None,
    ) -> FrozenTrial:
        """:meth:`tell`, with ``extra(conn)`` written in the tell's transaction (the HTTP service's lease)."""
        number = self._number(trial)
        # One read of the running trial: the sampler's after_trial hook, a pruned
        # trial's last intermediate value and the returned FrozenTrial all come from it.
        running = self.storage.optuna.get_trial(self._trial_id(number))
        if running.state.is_finished():
            running = self._read_again(number)
        if running.state.is_finished():
            raise InvalidRequest(
                f"trial {number} of study {self.name!r} is already finished ({running.state.name}); "
                "ask for a new trial instead"
            )
        told = check_tell(
            running,
            self.directions,
            self.name,
            value=value,
            values=values,
            scores=scores,
            metrics=metrics,
            state=state,
            error=error,
            user_attrs=user_attrs,
        )
        done_at, started_at = datetime.now(), self._started.get(number)
        try:
            _optuna.after_trial(self.optuna, running, told.state, told.values)
        finally:
            written = self._finish(running, told, done_at, started_at, extra)
        if not written:  # another process told it between our read and our write
            raise InvalidRequest(f"trial {number} of study {self.name!r} was finished meanwhile")
        after_tell(self.name, told.state, told.values, told.rows, told.user_attrs)
        return frozen_after(running, told, started_at, done_at)

    def _read_again(self, number: int) -> FrozenTrial:
        # Finished trials are served from this process's cache. Before refusing a tell on
        # one, look at the database: another process may have deleted the study and created
        # it again, and SQLite gives the new trials the deleted ones' ids (a refresh notices).
        self._ids.pop(number, None)
        try:
            self.storage.optuna.get_all_trials(self._study_id, deepcopy=False)
        except KeyError as exc:
            raise StudyNotFound(f"study {self.name!r} was deleted; create it again, or load another") from exc
        return self.storage.optuna.get_trial(self._trial_id(number))

    def _number(self, trial: TrialHandle | int) -> int:
        number = trial.number if isinstance(trial, TrialHandle) else trial
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
            raise InvalidRequest(f"tell needs a TrialHandle or a trial number; got {trial!r:.60}")
        if isinstance(trial, TrialHandle):
            # A handle from another study must not land on this study's trial of the same number.
            if trial.study and trial.study != self.name:
                raise InvalidRequest(
                    f"trial {number} was asked from study {trial.study!r}, not {self.name!r}; tell it on the study that asked"
                )
            if trial.trial_id >= 0 and self._trial_id(int(number)) != trial.trial_id:
                raise InvalidRequest(
                    f"this handle's trial is not trial {number} of study {self.name!r} (another study or "
                    "database asked for it); tell it on the study that asked"
                )
        return int(number)

    def _finish(
        self,
        running: FrozenTrial,
        told: Told,
        done_at: datetime,
        started_at: datetime | None,
        extra: InTransaction | None = None,
    ) -> bool:
        """Write a checked tell: state, values, user_attrs, metrics rows, dashboard note and ``extra`` in one transaction."""
        trial_id = _optuna.trial_id(running)
        # a failed trial's last trace steps join its user_attrs; the note rides in the same transaction
        note = before_tell(self._study_id, trial_id, running.number, told.state, told.user_attrs, told.rows)
        if extra is not None:
            note = in_order(extra, note)
        try:
            return finish_trial(
                self.storage,
                study_id=self._study_id,
                trial_id=trial_id,
                trial_number=running.number,
                state=told.state,
                values=told.values,
                user_attrs=told.user_attrs,
                metrics=told.rows,
                extra=note,
                completed_at=done_at,
                started_at=started_at,
            )
        finally:
            self.storage.heartbeat.discard(trial_id)
            self._ids.pop(running.number, None)
            self._started.pop(running.number, None)

    # ---- housekeeping ------------------------------------------------------------------

    def trial_id(self, number: int) -> int:
        """The storage id of trial ``number``; TrialNotFound if there is none."""
        return self._trial_id(number)

    def _trial_id(self, number: int) -> int:
        if number in self._ids:
            return self._ids[number]
        try:
            return self.storage.optuna.get_trial_id_from_study_id_trial_number(self._study_id, number)
        except KeyError as exc:
            raise TrialNotFound(f"study {self.name!r} has no trial number {number}") from exc

    def _single_objective(self, what: str) -> None:
        if len(self.optuna.directions) != 1:
            raise InvalidRequest(f"{what} is for single-objective studies; use best_trials for the Pareto front")

    def _maybe_fail_stale(self) -> None:
        now = time.monotonic()
        if now - self._last_stale_check >= self.storage.heartbeat_interval:
            self._last_stale_check = now
            self.fail_stale_trials()

    def fail_stale_trials(self) -> list[int]:
        """FAIL every trial whose process stopped heartbeating; re-enqueue it per ``retries``.

        A stale trial that never began (no parameter, no report: e.g. the one a killed
        ``optimize`` had queued for its next free worker) goes back to the queue
        (WAITING) instead. Returns the numbers of the trials failed by this call.
        """
        mine = self.storage.heartbeat.tracked()
        failed: list[int] = []
        retries = None
        for trial_id in self.storage.stale_trial_ids(self._study_id):
            if trial_id in mine:
                continue
            frozen = self.storage.optuna.get_trial(trial_id)
            if not frozen.params and not frozen.intermediate_values:
                self._requeue(trial_id)  # (False: another process got there first)
                continue
            reason = (
                f"stale: no heartbeat for over {self.storage.grace_period}s; the process "
                "running this trial died or hung"
            )
            if retries is None:
                retries = self.retries
            if self.fail_abandoned(frozen, reason=reason, failure="stale", retries=retries):
                failed.append(frozen.number)
        return failed

    def fail_abandoned(self, frozen: FrozenTrial, *, reason: str, failure: str, retries: int | None = None) -> bool:
        """FAIL a RUNNING trial its owner abandoned and retry it per policy; False if another process did.

        ``reason`` lands in the ``error`` user_attr and ``failure`` names the kind
        ("stale", "lease"). Safe to race: only the process that changes the state retries.
        """
        changed = finish_trial(
            self.storage,
            study_id=self._study_id,
            trial_id=_optuna.trial_id(frozen),
            trial_number=frozen.number,
            state=TrialState.FAIL,
            user_attrs={"error": reason, "failure": failure},
        )
        if changed:  # the loser of a race (another process failed it first) leaves the retry to the winner
            self.retry(frozen, self.retries if retries is None else retries)
        return changed

    def _requeue(self, trial_id: int) -> bool:
        # A trial asked but never started goes back to the queue (WAITING): the next
        # ask anywhere hands it out again, with whatever it was enqueued with.
        self.storage.heartbeat.discard(trial_id)
        return requeue_trial(self.storage, trial_id)

    def retry(self, frozen: FrozenTrial, retries: int) -> bool:
        """Re-enqueue a failed trial's parameters if it has retries left; True if it did."""
        attempt = int(frozen.user_attrs.get("retry", 0))
        if attempt >= retries or not frozen.params:
            return False
        origin = int(frozen.user_attrs.get("retry_of", frozen.number))
        retrying(
            self.optuna.enqueue_trial,
            dict(frozen.params),
            user_attrs={"retry_of": origin, "retry": attempt + 1},
            skip_if_exists=False,
        )
        return True

    def optimize(
        self,
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
        artifacts: str | Path | None | bool = None,
    ) -> OptimizeReport:
        """Run ``objective`` on trials of this study in ``workers`` subprocesses (0: in this thread).

        Only this process touches the storage; the workers' ``suggest_*`` calls are
        answered here (see ``optimizer/optimize/_optimize.py`` for the loop).

        Args:
            objective: a callable taking an Optuna-style trial, or ``"package.module:function"``;
                it returns a float, per-example scores (a sequence), or an ``Evaluation``.
            n_trials: stop after this call finished this many trials (retries included).
            timeout: seconds after which no new trial starts (the trial queued for the
                next free worker goes back to the study's queue, WAITING).
            workers: trials running at once, each in its own worker process, plus one
                asked ahead and queued so that a free worker starts at once; 0 runs
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
            artifacts: a folder for Optuna artifacts: at the end, the study report's figure
                is stored there for optuna-dashboard (``studyhall dashboard`` finds it);
                default ``$STUDYHALL_ARTIFACTS`` if set, else none; False: never.

        Raises:
            InvalidRequest: a bad argument, or an objective that cannot reach a worker.
            KeyboardInterrupt: after Ctrl-C, once no trial of this call is left RUNNING.
        """
        from studyhall.optimizer.optimize._optimize import optimize
        from studyhall.optimizer.telemetry._artifacts import attach_if_configured

        report = optimize(
            self,
            objective,
            n_trials=n_trials,
            timeout=timeout,
            workers=workers,
            trial_timeout=trial_timeout,
            retries=retries,
            space=space,
            progress=progress,
            max_total_trials=max_total_trials,
            catch=catch,
        )
        attach_if_configured(self, artifacts)
        return report


def _check_lease(lease_s: float | None) -> float | None:
    if lease_s is None:
        return None
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s <= 30 * 86400:
        raise InvalidRequest(f"lease_s must be seconds, more than 0 and at most 30 days; got {lease_s!r:.40}")
    return float(lease_s)
