"""The parent side of a remote trial: the job sent to a worker, the proxy answering its calls.

::

    parent                                           pool worker
    make_job(...) ── dict ──> pool.submit(run_trial, job) ──> _trial_runner.run_trial(job)
    TrialProxy.handle  <──── ("suggest_float", args, kwargs) over worker_channel().call
      -> optuna.Trial.suggest_float -> storage ──── the value ────>
    TrialOutcome.from_dict  <──── the outcome dict

Only the parent touches the storage and the sampler; a worker needs neither.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import optuna

from studyhall.optimizer import services
from studyhall.optimizer.optimize._trial_runner import resolve
from studyhall.storage import InvalidRequest

_log = logging.getLogger("studyhall.optimize")
# Parent-side operations a worker may ask for, and nothing else.
FORWARDED = ("suggest_float", "suggest_int", "suggest_categorical", "report", "should_prune", "set_user_attr")


@dataclass
class TrialOutcome:
    """What came of one trial where it ran: ``complete``, ``pruned`` or ``fail``."""

    status: str
    value: float | None = None
    values: list[float] | None = None
    scores: list[float] | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    exception: bytes | None = None  # the objective raised outside ``catch``: optimize raises it

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialOutcome:
        """The outcome from ``run_trial``'s plain dict."""
        return cls(**d)


def make_job(
    number: int,
    objective: str | bytes | Callable[..., Any],
    *,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
    n_objectives: int,
    services: bytes | None,
    catch: tuple[type[BaseException], ...],
    study: str = "",
) -> dict[str, Any]:
    """The plain-data description of one trial that ``run_trial`` takes."""
    return {
        "study": study,
        "number": number,
        "objective": objective,
        "params": params,
        "user_attrs": user_attrs,
        "n_objectives": n_objectives,
        "services": services,
        "catch": catch,
    }


class CallsFirst:
    """The lock of ``optimize``'s sampler and storage, on which a worker's call goes first.

    A worker waiting for a ``suggest_*`` answer idles. While the parent has time to
    spare (``patient``), its own work (the ask for the trial queued ahead, a tell)
    waits until the workers' calls have been quiet for ``QUIET_S``, at most
    ``MAX_DEFER_S``; when the parent is the bottleneck it takes its turn at once.
    Parent work enters with ``with lock:``, a worker's call with ``with lock.urgent():``.
    Re-entrant.
    """

    QUIET_S = 0.003  # a trial's suggest_* calls come in a burst when it starts
    MAX_DEFER_S = 0.02

    def __init__(self) -> None:
        self.patient = False
        self._lock = threading.RLock()
        self._state = threading.Condition(threading.Lock())
        self._calls = 0
        self._last_call = float("-inf")
        self._owner: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Hold the lock for a worker's call, ahead of any parent work waiting for it."""
        with self._state:
            self._calls += 1
        try:
            self._acquire(defer=False)
            try:
                yield
            finally:
                self.__exit__()
        finally:
            with self._state:
                self._calls -= 1
                self._last_call = time.monotonic()
                self._state.notify_all()

    def expect_calls(self) -> None:
        """A worker is about to call (its trial just started): the parent's work waits for quiet from now."""
        with self._state:
            self._last_call = max(self._last_call, time.monotonic())

    def __enter__(self) -> CallsFirst:
        self._acquire(defer=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
            self._lock.release()

    def _acquire(self, defer: bool) -> None:
        me = threading.get_ident()
        if self._owner != me:  # a holder entering again must not wait for the calls it blocks
            if defer and self.patient:
                self._wait_until_quiet()
            self._lock.acquire()
            self._owner = me
        self._depth += 1

    def _wait_until_quiet(self) -> None:
        deadline = time.monotonic() + self.MAX_DEFER_S
        with self._state:
            while True:
                now = time.monotonic()
                quiet_at = self._last_call + self.QUIET_S
                if now >= deadline or (not self._calls and now >= quiet_at):
                    return
                self._state.wait(deadline - now if self._calls else min(deadline, quiet_at) - now)


class TrialProxy:
    """The parent's side of a RemoteTrial: applies its calls to the live ``optuna.Trial``."""

    def __init__(self, trial: optuna.Trial, lock: CallsFirst) -> None:
        self.trial = trial
        self._lock = lock

    def handle(self, payload: Any) -> Any:
        """Answer one forwarded call; its exceptions are raised again in the worker."""
        try:
            method, args, kwargs = payload
        except (TypeError, ValueError):
            raise InvalidRequest(f"malformed remote-trial call {payload!r:.80}") from None
        if method not in FORWARDED:
            raise InvalidRequest(f"remote trials cannot call {method!r}; allowed: {', '.join(FORWARDED)}")
        with self._lock.urgent():  # the sampler and the storage are used by one thread at a time
            return getattr(self.trial, method)(*args, **kwargs)


def load_objective(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """Check (and load here) a callable or ``"package.module:function"`` objective."""
    if callable(ref):
        return ref
    if not isinstance(ref, str):
        raise InvalidRequest(f"objective must be a callable or 'package.module:function'; got {type(ref).__name__}")
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise InvalidRequest(f"objective {ref!r} is not of the form 'package.module:function'")
    try:
        obj = resolve(ref)
    except (ImportError, AttributeError) as exc:
        raise InvalidRequest(
            f"cannot load objective {ref!r} ({type(exc).__name__}: {exc}); check the name and sys.path"
        ) from exc
    if not callable(obj):
        raise InvalidRequest(f"objective {ref!r} is a {type(obj).__name__}, not a function")
    return obj


def ship_objective(objective: str | Callable[..., Any]) -> str | bytes:
    """What a worker gets: the ``"module:function"`` name, or the callable cloudpickled once."""
    if isinstance(objective, str):
        return objective
    try:
        return cloudpickle.dumps(objective)  # type: ignore[no-any-return]
    except Exception as exc:
        raise InvalidRequest(
            f"the objective cannot be pickled for the worker processes ({type(exc).__name__}: {exc}); "
            "pass 'package.module:function', or use workers=0 to run in this process"
        ) from exc


def ship_services() -> bytes | None:
    """The picklable services visible here (overrides included), pickled; None if there are none."""
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
