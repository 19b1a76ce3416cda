"""The trial an objective sees in a pool worker, and the task that runs it there.

::

    pool worker                                   parent (optimize)
    run_trial(job) ── services.restore, bridge.recording
      objective(RemoteTrial)
        .suggest_float(...) ──channel.call──────> TrialProxy.handle
                                                   -> optuna.Trial.suggest_float -> storage
                            <──── the value ─────
        .report / .should_prune / .set_user_attr   (forwarded the same way)
        .observe(name, x) -> TaskRecorder            (local; ships with the outcome)
      -> TrialOutcome(status, value(s), scores, metrics, user_attrs, error, traceback)

Only the parent touches the storage and the sampler; a worker needs neither.
In-process runs (``workers=0``) use the same code with a direct channel.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np
import optuna

from bridge import current_recorder, recording
from optimizer import services
from optimizer._study import Evaluation
from storage import InvalidRequest

TRACEBACK_LINES = 20
# Parent-side operations a worker may ask for, and nothing else.
_FORWARDED = ("suggest_float", "suggest_int", "suggest_categorical", "report", "should_prune", "set_user_attr")


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to run one trial (small and picklable)."""

    number: int
    objective: str | bytes  # "package.module:function" or a cloudpickled callable
    params: dict[str, Any] = field(default_factory=dict)  # sampled up front from space=
    user_attrs: dict[str, Any] = field(default_factory=dict)
    n_objectives: int = 1
    services: bytes | None = None
    catch: tuple[type[BaseException], ...] = (Exception,)


@dataclass
class TrialOutcome:
    """What came of one trial in the worker: ``complete``, ``pruned`` or ``fail``."""

    status: str
    value: float | None = None
    values: list[float] | None = None
    scores: list[float] | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    exception: bytes | None = None  # set when the exception is not in ``catch``: optimize raises it


class RemoteTrial:
    """An Optuna-style trial whose calls are answered by the parent's real ``optuna.Trial``.

    Ordinary define-by-run objectives (``suggest_*``, ``report``, ``should_prune``,
    ``set_user_attr``) work unchanged; ``observe(name, x)`` adds a sample to a
    distribution stored with the trial (e.g. ``trial.observe("llm.latency_s", 0.4)``).
    """

    def __init__(self, job: TrialJob, call: Callable[[Any], Any]) -> None:
        self._call = call
        self._number = job.number
        self._fixed = dict(job.params)
        self._params: dict[str, Any] = dict(job.params)
        self._user_attrs: dict[str, Any] = dict(job.user_attrs)

    def __repr__(self) -> str:
        return f"RemoteTrial(number={self._number}, params={self._params})"

    @property
    def number(self) -> int:
        """The trial's number in its study."""
        return self._number

    @property
    def params(self) -> dict[str, Any]:
        """The parameters suggested so far."""
        return dict(self._params)

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The trial's user attributes (including ``retry``/``retry_of`` of a retried trial)."""
        return dict(self._user_attrs)

    def _suggest(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._fixed:  # sampled up front from space=: no round trip
            return self._fixed[name]
        value = self._call((method, (name, *args), kwargs))
        self._params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        """A float in [low, high], sampled by the study's sampler."""
        return float(self._suggest("suggest_float", name, low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        """An integer in [low, high], sampled by the study's sampler."""
        return int(self._suggest("suggest_int", name, low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """One of ``choices``, sampled by the study's sampler."""
        return self._suggest("suggest_categorical", name, list(choices))

    def suggest_uniform(self, name: str, low: float, high: float) -> float:
        """Old Optuna spelling of ``suggest_float(name, low, high)``."""
        return self.suggest_float(name, low, high)

    def suggest_loguniform(self, name: str, low: float, high: float) -> float:
        """Old Optuna spelling of ``suggest_float(name, low, high, log=True)``."""
        return self.suggest_float(name, low, high, log=True)

    def suggest_discrete_uniform(self, name: str, low: float, high: float, q: float) -> float:
        """Old Optuna spelling of ``suggest_float(name, low, high, step=q)``."""
        return self.suggest_float(name, low, high, step=q)

    def report(self, value: float, step: int) -> None:
        """An intermediate value at ``step`` (for the study's pruner)."""
        self._call(("report", (float(value), int(step)), {}))

    def should_prune(self) -> bool:
        """Whether the study's pruner (run in the parent) says to stop this trial."""
        return bool(self._call(("should_prune", (), {})))

    def set_user_attr(self, key: str, value: Any) -> None:
        """Store ``key`` = ``value`` (JSON-serialisable) on the trial."""
        self._call(("set_user_attr", (key, value), {}))
        self._user_attrs[key] = value

    def observe(self, name: str, value: float) -> None:
        """Add one sample of ``name``; the trial stores its distribution (p50, p90, ...)."""
        rec = current_recorder()
        if rec is None:  # only when someone calls it outside run_trial
            raise InvalidRequest("observe() works only while the trial runs")
        rec.observe(name, value)


class TrialProxy:
    """The parent's side of a RemoteTrial: applies its calls to the live ``optuna.Trial``."""

    def __init__(self, trial: optuna.Trial, lock: threading.RLock) -> None:
        self.trial = trial
        self._lock = lock

    def handle(self, payload: Any) -> Any:
        """Answer one forwarded call; its exceptions are raised again in the worker."""
        try:
            method, args, kwargs = payload
        except (TypeError, ValueError):
            raise InvalidRequest(f"malformed remote-trial call {payload!r:.80}") from None
        if method not in _FORWARDED:
            raise InvalidRequest(f"remote trials cannot call {method!r}; allowed: {', '.join(_FORWARDED)}")
        with self._lock:  # the sampler and the storage are used by one thread at a time
            return getattr(self.trial, method)(*args, **kwargs)


# ---- the task a worker runs ---------------------------------------------------------------

_loaded: dict[bytes, Any] = {}
_loaded_lock = threading.Lock()


def load_objective(ref: str | bytes | Callable[..., Any]) -> Callable[..., Any]:
    """The objective from a callable, a cloudpickle blob or ``"package.module:function"``."""
    if callable(ref):
        return ref
    if isinstance(ref, str):
        module, sep, attr = ref.partition(":")
        if not sep or not module or not attr:
            raise InvalidRequest(f"objective {ref!r} is not of the form 'package.module:function'")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise InvalidRequest(f"cannot load objective {ref!r} ({type(exc).__name__}: {exc}); check the name and sys.path") from exc
        if not callable(obj):
            raise InvalidRequest(f"objective {ref!r} is a {type(obj).__name__}, not a function")
        return obj  # type: ignore[no-any-return]
    return _unpickle(ref)  # type: ignore[no-any-return]


def _unpickle(blob: bytes) -> Any:
    # One optimize() ships the same blobs with every trial; load them once per worker.
    key = hashlib.blake2b(blob, digest_size=16).digest()
    with _loaded_lock:
        if key in _loaded:
            return _loaded[key]
    obj = cloudpickle.loads(blob)
    with _loaded_lock:
        if len(_loaded) >= 16:
            _loaded.clear()
        _loaded[key] = obj
    return obj


def run_trial(job: TrialJob, call: Callable[[Any], Any] | None = None) -> TrialOutcome:
    """Run one trial (in a pool worker unless ``call`` is given) and describe what came of it."""
    if call is None:
        from bridge import worker_channel

        channel = worker_channel()
        if channel is None:
            raise InvalidRequest("run_trial runs in a WorkerPool task, or needs call= for in-process use")
        call = channel.call
    shipped = _unpickle(job.services) if job.services is not None else {}
    with services.restore(shipped), recording() as rec:
        try:
            objective = load_objective(job.objective)
            result = objective(RemoteTrial(job, call))
        except optuna.TrialPruned:
            outcome = TrialOutcome("pruned")
        except Exception as exc:  # the objective's failure is the trial's, not the worker's
            outcome = _failure(exc, reraise=not isinstance(exc, job.catch))
        else:
            try:
                outcome = _outcome(result, job.n_objectives)
            except (TypeError, ValueError) as exc:
                outcome = _failure(exc)
    samples, counters = rec.snapshot()
    for name, xs in samples.items():
        outcome.metrics.setdefault(name, []).extend(xs)
    for name, total in counters.items():
        outcome.user_attrs.setdefault(name, int(total) if float(total).is_integer() else total)
    return outcome


def _failure(exc: Exception, reraise: bool = False) -> TrialOutcome:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    out = TrialOutcome("fail", error=f"{type(exc).__name__}: {exc}", traceback="\n".join(lines[-TRACEBACK_LINES:]))
    if reraise:
        try:
            out.exception = cloudpickle.dumps(exc)
        except Exception:
            out.exception = b""  # optimize raises a RuntimeError with the message instead
    return out


def _outcome(result: Any, n_objectives: int) -> TrialOutcome:
    hint = "return a float, a sequence (per-example scores, or one value per objective) or an Evaluation"
    if isinstance(result, Evaluation):
        out = TrialOutcome("complete", metrics={k: [float(x) for x in v] for k, v in result.metrics.items()})
        out.user_attrs = dict(result.user_attrs)
        json.dumps(out.user_attrs)  # a TypeError here fails the trial with a clear message
        if result.scores is not None:
            out.scores = [float(x) for x in result.scores]
        if result.value is None and out.scores is None:
            raise ValueError(f"the objective returned an Evaluation with neither value nor scores; {hint}")
        if result.value is not None:
            _set_value(out, result.value, n_objectives)
        elif n_objectives != 1:
            raise ValueError(f"a study with {n_objectives} objectives needs Evaluation(value=[...]) with one value each")
        _check_finite(out.scores or [], "score")
        return out
    out = TrialOutcome("complete")
    if isinstance(result, (Sequence, np.ndarray)) and not isinstance(result, (str, bytes)) and n_objectives == 1:
        out.scores = [float(x) for x in np.asarray(result, dtype=float).reshape(-1)]
        if not out.scores:
            raise ValueError(f"the objective returned an empty sequence of scores; {hint}")
        _check_finite(out.scores, "score")
        return out
    _set_value(out, result, n_objectives)
    return out


def _set_value(out: TrialOutcome, value: Any, n_objectives: int) -> None:
    seq = isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))
    if isinstance(value, bool) or not (seq or isinstance(value, (int, float, np.number))):
        raise TypeError(
            f"the objective returned {type(value).__name__} {value!r:.60}; return a float, a sequence "
            "(per-example scores, or one value per objective) or an Evaluation"
        )
    vals = [float(x) for x in np.asarray(value, dtype=float).reshape(-1)] if seq else [float(value)]
    _check_finite(vals, "value")
    if n_objectives == 1 and len(vals) == 1:
        out.value = vals[0]
    else:
        out.values = vals


def _check_finite(xs: Sequence[float], what: str) -> None:
    for x in xs:
        if not math.isfinite(x):
            raise ValueError(f"the objective returned a non-finite {what} ({x}); return finite numbers, or raise to fail the trial")

