"""The worker side of a remote trial: ``RemoteTrial`` and ``run_trial``.

::

    run_trial(job) ── services.restore (if any were shipped), bridge recording()
      objective(RemoteTrial)
        .suggest_float(...) ──call──> parent: TrialProxy -> optuna.Trial -> storage
        .report / .should_prune / .set_user_attr      (forwarded the same way)
        .observe(name, x) -> TaskRecorder             (local; ships with the outcome)
      -> {"status", "value" | "values" | "scores", "metrics", "user_attrs", "error", ...}

A pool worker imports this module (its ``run_trial`` is the task the pool runs),
so it imports nothing heavy: the standard library, ``studyhall.bridge`` (which
loads neither Optuna nor SQLAlchemy) and ``Evaluation``; plain dicts cross the
boundary. An objective that does not need Optuna does not wait for it
(``tests/optimizer/test_optimize.py`` checks what a worker has loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from studyhall.bridge import TaskRecorder, recording, worker_channel
from studyhall.optimizer import _otel
from studyhall.optimizer.optimize._evaluation import Evaluation

TRACEBACK_LINES = 20
STARTED = "started"  # the message a pool worker sends when it starts a trial: {"studyhall": STARTED, "at": epoch}
_HINT = "return a float, a sequence (per-example scores, or one value per objective) or an Evaluation"


class RemoteTrial:
    """An Optuna-style trial whose calls are answered by the parent's real ``optuna.Trial``.

    Ordinary define-by-run objectives (``suggest_*``, ``report``, ``should_prune``,
    ``set_user_attr``) work unchanged; ``observe(name, x)`` adds a sample to a
    distribution stored with the trial (e.g. ``trial.observe("llm.latency_s", 0.4)``).
    """

    def __init__(self, job: dict[str, Any], call: Callable[[Any], Any], recorder: TaskRecorder) -> None:
        self._call = call
        self._recorder = recorder
        self._number: int = job["number"]
        self._fixed: dict[str, Any] = dict(job["params"])
        self._params: dict[str, Any] = dict(job["params"])
        self._user_attrs: dict[str, Any] = dict(job["user_attrs"])

    def __repr__(self) -> str:
        return f"RemoteTrial(number={self._number}, params={self._params})"

    @property
    def number(self) -> int:
        """The trial's number in its study."""
        return self._number

    @property
    def params(self) -> dict[str, Any]:
        """The parameters suggested so far (and those sampled up front from ``space=``)."""
        return dict(self._params)

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The trial's user attributes (including ``retry``/``retry_of`` of a retried trial)."""
        return dict(self._user_attrs)

    def _suggest(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._fixed:  # sampled up front: no round trip
            return self._fixed[name]
        value = self._call((method, (name, *args), kwargs))
        self._params[name] = value
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
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
        self._recorder.observe(name, value)


# One optimize() ships the same blobs with every trial: unpickle each once per worker.
_loaded: dict[bytes, Any] = {}
_loaded_lock = threading.Lock()


def _unpickle(blob: bytes) -> Any:
    key = hashlib.blake2b(blob, digest_size=16).digest()
    with _loaded_lock:
        if key in _loaded:
            return _loaded[key]
    import cloudpickle

    obj = cloudpickle.loads(blob)
    with _loaded_lock:
        if len(_loaded) >= 16:
            _loaded.clear()
        _loaded[key] = obj
    return obj


def resolve(ref: str | bytes | Callable[..., Any]) -> Callable[..., Any]:
    """The objective from a callable, a cloudpickle blob or ``"package.module:function"``."""
    if callable(ref):
        return ref
    if isinstance(ref, bytes):
        return _unpickle(ref)  # type: ignore[no-any-return]
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def run_trial(job: dict[str, Any], call: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Run one trial (in a pool worker unless ``call`` is given); a dict describes what came of it."""
    if call is None:
        channel = worker_channel()
        if channel is None:
            raise RuntimeError("run_trial without call= runs as a pool task (optimize submits it)")
        # The trial may have waited in the pool's queue since it was asked: its true start.
        channel.send({"studyhall": STARTED, "at": time.time()})
        call = channel.call
    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(recording(_otel.recorder()))  # with OpenTelemetry on: LLM calls as spans too
        if job["services"] is not None:
            from studyhall.optimizer import services  # only when there are services to restore

            stack.enter_context(services.restore(_unpickle(job["services"])))
        # the trial's span: what the objective records (steps, workflows, LLM calls) nests under it
        span = stack.enter_context(_otel.span("studyhall.trial", _otel.trial_attributes(job)))
        out = _run(job, call, rec)
        _otel.set_attributes(span, _otel.outcome_attributes(out))
    samples, counters = rec.snapshot()
    for name, xs in samples.items():
        out["metrics"].setdefault(name, []).extend(xs)
    for name, total in counters.items():
        out["user_attrs"].setdefault(name, int(total) if float(total).is_integer() else total)
    return out


def _run(job: dict[str, Any], call: Callable[[Any], Any], rec: TaskRecorder) -> dict[str, Any]:
    try:
        result = resolve(job["objective"])(RemoteTrial(job, call, rec))
    except Exception as exc:  # the objective's failure is the trial's, not the worker's
        optuna_exc = sys.modules.get("optuna.exceptions")  # raising TrialPruned means optuna is loaded
        if optuna_exc is not None and isinstance(exc, optuna_exc.TrialPruned):
            return _new("pruned")
        return _failure(exc, reraise=not isinstance(exc, job["catch"]))
    try:
        return _outcome(result, job["n_objectives"])
    except (TypeError, ValueError) as exc:  # a result that is not a result: always the trial's failure
        return _failure(exc)


def _new(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "status": status,
        "value": None,
        "values": None,
        "scores": None,
        "metrics": {},
        "user_attrs": {},
        "error": None,
        "traceback": None,
        "exception": None,
        **fields,
    }


def _failure(exc: BaseException, reraise: bool = False) -> dict[str, Any]:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    out = _new("fail", error=f"{type(exc).__name__}: {exc}", traceback="\n".join(lines[-TRACEBACK_LINES:]))
    if reraise:
        try:
            import cloudpickle

            out["exception"] = cloudpickle.dumps(exc)
        except Exception:
            out["exception"] = b""  # optimize() raises a RuntimeError with the message instead
    return out


def _floats(xs: Any, what: str) -> list[float]:
    if hasattr(xs, "reshape"):  # a numpy array, of any shape
        xs = xs.reshape(-1).tolist()
    out = [float(x) for x in xs]
    for x in out:
        if not math.isfinite(x):
            raise ValueError(
                f"the objective returned a non-finite {what} ({x}); return finite numbers, or raise to fail the trial"
            )
    return out


def _is_seq(x: Any) -> bool:
    return (isinstance(x, Sequence) or hasattr(x, "reshape")) and not isinstance(x, (str, bytes))


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.number)


def _outcome(result: Any, n_objectives: int) -> dict[str, Any]:
    out = _new("complete")
    if isinstance(result, Evaluation):
        out["metrics"] = {str(k): _floats(v, f"sample of {k!r}") for k, v in result.metrics.items()}
        out["user_attrs"] = dict(result.user_attrs)
        json.dumps(out["user_attrs"])  # a TypeError here fails the trial with a clear message
        if result.scores is not None:
            out["scores"] = _floats(result.scores, "score")
        if result.value is not None:
            _set_value(out, result.value, n_objectives)
        elif out["scores"] is None:
            raise ValueError(f"the objective returned an Evaluation with neither value nor scores; {_HINT}")
        return out
    if _is_seq(result) and n_objectives == 1:
        out["scores"] = _floats(result, "score")
        if not out["scores"]:
            raise ValueError(f"the objective returned an empty sequence of scores; {_HINT}")
        return out
    _set_value(out, result, n_objectives)
    return out


def _set_value(out: dict[str, Any], value: Any, n_objectives: int) -> None:
    if _is_seq(value):
        vals = _floats(value, "value")
    elif _is_number(value):
        vals = _floats([value], "value")
    else:
        raise TypeError(f"the objective returned {type(value).__name__} {value!r:.60}; {_HINT}")
    if n_objectives == 1 and len(vals) == 1:
        out["value"] = vals[0]
    else:
        out["values"] = vals
