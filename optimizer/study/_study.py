"""Study: create/ask/tell on an Optuna study, with distributions and no stuck trials.

ask ──> optuna.ask (retried) ──> heartbeat.add ──> TrialHandle
tell ─> read the running trial ──> validate (nothing written on bad input) ──> sampler.after_trial
        ──> state + values + user_attrs + telemetry rows + note (one transaction) ──> heartbeat.discard
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer import telemetry
from studyhall.optimizer.study._space import Space, check_params, space_from_json, space_to_json, to_distributions
from studyhall.optimizer.study._summary import Summary, as_array, summarize, summary_attrs
from studyhall.storage import InvalidRequest, Storage, TrialNotFound, retrying
from studyhall.storage._trials import finish_trial, read_trial_metrics, requeue_trial

if TYPE_CHECKING:
    from studyhall.optimizer.optimize._report import OptimizeReport
    from studyhall.optimizer.telemetry import StudyMetrics

SPACE_ATTR = "studyhall:space"
RETRIES_ATTR = "studyhall:retries"
SAMPLER_ATTR = "studyhall:sampler"
_STATES = {"complete": TrialState.COMPLETE, "fail": TrialState.FAIL, "pruned": TrialState.PRUNED}
_MAX_ERROR_LEN = 2000
_MAX_CACHED_IDS = 100_000  # number -> trial id of asked trials, a cache (tell reads the database without it)


@dataclass(frozen=True)
class TrialHandle:
    """A trial handed out by ``ask``: its number and the parameters to evaluate."""

    number: int
    params: dict[str, Any]
    trial_id: int = field(default=-1, repr=False, compare=False)


@contextlib.contextmanager
def _quiet_ask(study: optuna.Study) -> Iterator[None]:
    # Optuna warns when heartbeats are on outside optimize(); studyhall heartbeats
    # ask/tell trials itself. The flag is thread-local, unlike warnings filters.
    tl = study._thread_local
    before = tl.in_optimize_loop
    tl.in_optimize_loop = True
    try:
        yield
    finally:
        tl.in_optimize_loop = before


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
        self._study_id: int = study._study_id
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
        if n < 0:
            raise InvalidRequest(f"retries must be >= 0; got {n}")
        retrying(self.storage.optuna.set_study_system_attr, self._study_id, RETRIES_ATTR, int(n))

    def _system_attrs(self) -> dict[str, Any]:
        return retrying(self.storage.optuna.get_study_system_attrs, self._study_id)

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
        st = None if states is None else tuple(_parse_state(s, told=False) for s in states)
        return retrying(self.optuna.get_trials, deepcopy=False, states=st)

    def trial(self, number: int) -> FrozenTrial:
        """One trial by number; TrialNotFound if there is none."""
        return retrying(self.storage.optuna.get_trial, self._trial_id(number))

    def metrics(self, name: str = "score") -> StudyMetrics:
        """The study's distributions: trial values, ``name`` and LLM latency pooled over trials."""
        return telemetry.study_metrics(self, name)

    def trial_metrics(self, number: int) -> dict[str, Summary]:
        """Every distribution stored for trial ``number`` (``score``, ``llm.latency_s``, ...)."""
        rows = read_trial_metrics(self.storage, self._trial_id(number))
        return {name: Summary.from_dict(row) for name, row in rows.items()}

    # ---- ask ---------------------------------------------------------------------------

    def ask(self, space: Space | None = None, *, keepalive: bool = True) -> TrialHandle:
        """Start a trial and sample its parameters from ``space`` (or the study's last space).

        Enqueued parameters (``enqueue``, retries) are handed out first. The trial is
        heartbeated by this process until it is told; with ``keepalive=False`` the
        caller keeps it alive instead (the HTTP service's leases do).
        """
        dists = self._remember_space(space)
        self._maybe_fail_stale()
        return self._ask(dists, keepalive)

    def ask_batch(self, space: Space | None = None, k: int = 1, *, keepalive: bool = True) -> list[TrialHandle]:
        """``k`` trials at once; TPE's constant liar keeps them apart while they are pending."""
        if not isinstance(k, int) or k < 1:
            raise InvalidRequest(f"ask_batch needs k >= 1; got {k!r}")
        dists = self._remember_space(space)
        self._maybe_fail_stale()
        return [self._ask(dists, keepalive) for _ in range(k)]

    def _ask(self, dists: dict[str, optuna.distributions.BaseDistribution], keepalive: bool = True) -> TrialHandle:
        trial = self._ask_trial(dists, keepalive)
        return TrialHandle(trial.number, dict(trial.params), trial._trial_id)

    def _ask_trial(
        self, dists: dict[str, optuna.distributions.BaseDistribution], keepalive: bool = True
    ) -> optuna.Trial:
        # The live optuna.Trial: optimize() answers a worker's suggest_* calls with it.
        with _quiet_ask(self.optuna):
            trial = retrying(self.optuna.ask, fixed_distributions=dists)
        if len(self._ids) >= _MAX_CACHED_IDS:  # trials asked and never told (abandoned leases) must not pile up
            self._ids.clear()
        self._ids[trial.number] = trial._trial_id
        if keepalive:
            self.storage.heartbeat.add(trial._trial_id)
        return trial

    def _remember_space(self, space: Space | None) -> dict[str, optuna.distributions.BaseDistribution]:
        if space is None:
            return self.space
        dists = to_distributions(space)
        encoded = space_to_json(dists)
        if self._space_json is None:
            self._space_json = self._system_attrs().get(SPACE_ATTR)
        if self._space_json != encoded:  # persisted so other processes can check enqueues
            retrying(self.storage.optuna.set_study_system_attr, self._study_id, SPACE_ATTR, encoded)
            self._space_json = encoded
        return dists

    def enqueue(self, params: Mapping[str, Any], *, user_attrs: Mapping[str, Any] | None = None) -> None:
        """Queue ``params`` to be handed out by the next ``ask`` (checked against the known space)."""
        if not isinstance(params, Mapping):
            raise InvalidRequest(f"enqueue takes a dict of parameters; got {type(params).__name__}")
        dists = self.space
        if dists:
            check_params(params, dists)
        retrying(self.optuna.enqueue_trial, dict(params), user_attrs=dict(user_attrs or {}), skip_if_exists=False)

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
        number = trial.number if isinstance(trial, TrialHandle) else trial
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
            raise InvalidRequest(f"tell needs a TrialHandle or a trial number; got {trial!r:.60}")
        # One read of the running trial: the sampler's after_trial hook, a pruned
        # trial's last intermediate value and the returned FrozenTrial all come from it.
        running = retrying(self.storage.optuna.get_trial, self._trial_id(int(number)))
        if running.state.is_finished():
            raise InvalidRequest(
                f"trial {number} of study {self.name!r} is already finished ({running.state.name}); "
                "ask for a new trial instead"
            )
        st = _parse_state(state) if state is not None else TrialState.COMPLETE
        attrs: dict[str, Any] = dict(user_attrs or {})
        rows: list[tuple[str, dict[str, Any], np.ndarray | None]] = []
        score = None
        if scores is not None:
            arr = as_array(scores, "scores")
            if arr.size:
                score = summarize(arr)
                attrs.update(summary_attrs("score", score))
                rows.append(("score", score.as_dict(), arr))
        vals = self._values(value, values, scores, st, score)
        if st == TrialState.PRUNED and running.last_step is not None:
            last = running.intermediate_values[running.last_step]
            vals = [last] if math.isfinite(last) and len(self.optuna.directions) == 1 else None  # as Optuna does
        for name, samples in (metrics or {}).items():
            if not isinstance(name, str) or not name or len(name) > 128:
                raise InvalidRequest(f"metric names must be strings of 1-128 characters; got {name!r:.60}")
            arr = as_array(samples, f"metric {name!r}")
            if arr.size:
                s = summarize(arr)
                attrs.update(summary_attrs(name, s))
                rows.append((name, s.as_dict(), arr))
        if error is not None:
            attrs["error"] = str(error)[:_MAX_ERROR_LEN]
        # a failed trial's last trace steps; the dashboard note rides in the same transaction
        note = telemetry.before_tell(self._study_id, running._trial_id, int(number), st, attrs, rows)
        done_at = datetime.now()
        started_at = self._started.get(running.number)
        try:
            self._after_trial(running, st, vals)
        finally:
            # The state, values, user_attrs, metrics rows and note: one transaction.
            told = finish_trial(
                self.storage,
                study_id=self._study_id,
                trial_id=running._trial_id,
                trial_number=int(number),
                state=st,
                values=vals,
                user_attrs=attrs,
                metrics=rows,
                extra=note,
                completed_at=done_at,
                started_at=started_at,
            )
            self.storage.heartbeat.discard(running._trial_id)
            self._ids.pop(running.number, None)
            self._started.pop(running.number, None)
        if not told:  # another process told it between our read and our write
            raise InvalidRequest(f"trial {number} of study {self.name!r} was finished meanwhile")
        telemetry.after_tell(self.name, st, vals, rows, attrs)
        return FrozenTrial(
            number=running.number,
            state=st,
            value=None,
            values=vals,
            datetime_start=started_at or running.datetime_start,
            datetime_complete=done_at,
            params=running.params,
            distributions=running.distributions,
            user_attrs={**running.user_attrs, **attrs},
            system_attrs=running.system_attrs,
            intermediate_values=running.intermediate_values,
            trial_id=running._trial_id,
        )

    def _after_trial(self, running: FrozenTrial, state: TrialState, values: list[float] | None) -> None:
        # What optuna.Study.tell does before it writes: the sampler's hook (GridSampler
        # stops an exhausted grid; constraints are stored) on the pruner's view of the study.
        study = self.optuna
        study._thread_local.cached_all_trials = None
        view = optuna.pruners._filter_study(study, running)
        study.sampler.after_trial(view, running, state, values)

    def _values(
        self,
        value: float | Sequence[float] | None,
        values: Sequence[float] | None,
        scores: Sequence[float] | np.ndarray | None,
        state: TrialState,
        score: Summary | None,
    ) -> list[float] | None:
        n_obj = len(self.optuna.directions)
        if value is not None and values is not None:
            raise InvalidRequest("pass value= or values=, not both")
        raw: Any = values if values is not None else value
        if state != TrialState.COMPLETE:
            if raw is not None:
                raise InvalidRequest(f"a {state.name} trial takes no value; drop value=/values=")
            return None
        if raw is None and scores is not None:
            if n_obj != 1:
                raise InvalidRequest(
                    f"scores= sets the value of a single-objective study; this one has {n_obj} "
                    "objectives, so pass values=[...] (and keep scores as a metric)"
                )
            if score is None:
                raise InvalidRequest("scores is empty; pass at least one score, or a value")
            raw = score.mean
        if raw is None:
            raise InvalidRequest("tell needs a value, values=[...] or scores=[...] for a completed trial")
        seq = list(raw) if isinstance(raw, (Sequence, np.ndarray)) and not isinstance(raw, str) else [raw]
        if len(seq) != n_obj:
            raise InvalidRequest(
                f"study {self.name!r} has {n_obj} objective(s) ({', '.join(self.directions)}); "
                f"got {len(seq)} value(s)"
            )
        out = []
        for v in seq:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise InvalidRequest(f"values must be numbers; got {v!r:.60}")
            if not math.isfinite(float(v)):
                raise InvalidRequest(f"value {v} is not finite; tell state='fail' with an error instead")
            out.append(float(v))
        return out

    # ---- housekeeping ------------------------------------------------------------------

    def trial_id(self, number: int) -> int:
        """The storage id of trial ``number``; TrialNotFound if there is none."""
        return self._trial_id(number)

    def _trial_id(self, number: int) -> int:
        if number in self._ids:
            return self._ids[number]
        try:
            return retrying(self.storage.optuna.get_trial_id_from_study_id_trial_number, self._study_id, number)
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
            frozen = retrying(self.storage.optuna.get_trial, trial_id)
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
            trial_id=frozen._trial_id,
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

    def optimize(self, objective: Any, **kwargs: Any) -> OptimizeReport:
        """Run ``objective`` over many trials in a worker pool; see :mod:`optimizer._optimize`."""
        from studyhall.optimizer.optimize._optimize import optimize

        return optimize(self, objective, **kwargs)


def _parse_state(state: str | TrialState, *, told: bool = True) -> TrialState:
    if isinstance(state, str):
        key = state.lower()
        if key in _STATES:
            return _STATES[key]
        if not told and key.upper() in TrialState.__members__:
            return TrialState[key.upper()]
    elif isinstance(state, TrialState) and (not told or state in _STATES.values()):
        return state
    allowed = "'complete', 'fail' or 'pruned'" if told else "'complete', 'fail', 'pruned', 'running' or 'waiting'"
    raise InvalidRequest(f"unknown trial state {state!r}; use {allowed}")
