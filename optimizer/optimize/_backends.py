"""Where ``optimize`` runs trials (in this thread, or a WorkerPool), and Ctrl-C at safe points only."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from studyhall.optimizer import events, trace
from studyhall.optimizer.events._channel import MESSAGE_KEY
from studyhall.optimizer.optimize._remote_trial import TrialProxy
from studyhall.optimizer.optimize._trial_runner import STARTED, resolve, run_trial
from studyhall.storage import Storage


class Inline:
    """``workers=0``: each trial runs to its end inside ``submit``, in this thread."""

    capacity = 1
    ahead = 0

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def submit(
        self, job: dict[str, Any], proxy: TrialProxy, on_start: Callable[[float], None]
    ) -> Future[dict[str, Any]]:
        """Run the trial now; a future that is already done."""
        fut: Future[dict[str, Any]] = Future()
        with trace.scope(self.storage, trial=proxy.trial):  # trace.step() lands on this trial
            fut.set_result(run_trial(job, proxy.handle))
        return fut

    def close(self, exc: BaseException | None = None) -> None:
        """Nothing to stop."""


class Pooled:
    """``workers=N``: a WorkerPool of N; its workers start while the parent reads the study.

    Half as many trials again as there are workers are submitted (``ahead``): they
    wait in the pool's queue, so a worker that finishes starts its next trial at once
    instead of idling through the parent's asks. Workers that started together finish
    together; with one trial ahead the eighth waited behind seven asks (8 workers,
    100 ms trials: 2% of the call).
    """

    def __init__(self, workers: int, trial_timeout: float | None, storage: Storage, objective: str | bytes) -> None:
        from studyhall.bridge import WorkerPool

        self.capacity = workers
        self.ahead = max(1, workers // 2)
        self.storage = storage
        # Each worker loads the objective (and what its module imports) before its first
        # trial, so trial_timeout counts the trial alone.
        self.pool = WorkerPool(
            min_workers=workers,
            max_workers=workers,
            task_timeout=trial_timeout,
            initializer=functools.partial(resolve, objective),
            preload=[run_trial.__module__],  # what every worker runs: imported once, in the zygote
        )
        self.pool.__enter__()
        self._open = True

    def submit(
        self, job: dict[str, Any], proxy: TrialProxy, on_start: Callable[[float], None]
    ) -> Future[dict[str, Any]]:
        """Queue the trial for a worker; ``on_start`` gets the time the worker really began it."""
        # the objective's events and trace steps are written here, tied to the trial
        sink = events.worker_sink(self.storage, proxy.trial)

        def on_send(payload: Any) -> None:
            if isinstance(payload, dict) and payload.get(MESSAGE_KEY) == STARTED:
                on_start(float(payload["at"]))
            else:
                sink(payload)

        return self.pool.submit(run_trial, job, on_call=proxy.handle, on_send=on_send)

    def close(self, exc: BaseException | None = None) -> None:
        """Stop the workers; after an error, kill the running ones too (the pool's exit on error)."""
        if self._open:
            self._open = False
            self.pool.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


class Interrupts:
    """Defers Ctrl-C inside ``shield()`` blocks to their end.

    A KeyboardInterrupt between Optuna creating a trial and ``optimize`` noting it
    (or between a tell's two writes) would leave a trial RUNNING that nobody fails.
    Only installed on the main thread when Python's own SIGINT handler is active.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._depth:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """A block that Ctrl-C does not cut in two; the interrupt is raised when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                raise KeyboardInterrupt
