"""The state a ``WorkerPool`` shares between its threads, and what ends a task or a worker.

``_pool.py`` is the front (public API and lifecycle); ``_dispatch.py`` hands tasks
to workers and handles what the lanes read; ``_supervisor.py`` watches processes
and deadlines. All three work on the attributes declared on
``PoolCore`` here, under ``PoolCore._lock``.
"""

from __future__ import annotations

import enum
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from studyhall.bridge._errors import InvalidRequest, PoolClosed, RestartStorm, TaskTimeout, WorkerCrashed
from studyhall.bridge.pool._tasks import Task, fail
from studyhall.bridge.pool._workers import WorkerProcess, WorkerState

if TYPE_CHECKING:
    import itertools

    from studyhall.bridge.pool._zygote import Zygote

INF = float("inf")
# Workers that can take (or are running) work, as opposed to ones on their way out.
CAPACITY = (WorkerState.STARTING, WorkerState.IDLE, WorkerState.CHECKING, WorkerState.BUSY)

Fail = tuple[Task, BaseException, "str | None"]  # a task to fail, and the counter it adds to


class PoolState(enum.Enum):
    """The pool's lifecycle: CREATED -> RUNNING (first use) -> CLOSING (shutdown) -> CLOSED."""

    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class PoolTimeouts:
    """The named phases of stopping and watching workers, in seconds.

    Attributes:
        kill_grace: after SIGTERM to a worker's process group (a task past its
            timeout, an unresponsive worker), how long before SIGKILL.
        start: how long a new worker may take to say it is ready.
        health_check: how long an idle worker may take to answer a ping
            (including the user's ``health_check``).
        stop: how long a worker told to exit (shrink, recycle) may take before it is killed.
        drain: after a worker died, how long to wait for the rest of its messages
            while none is being handled (they reach ``on_send`` before the task's
            future fails); only something the task started that still holds the
            socket open makes this wait run out.
    """

    kill_grace: float = 0.3
    start: float = 60.0
    health_check: float = 5.0
    stop: float = 5.0
    drain: float = 2.0

    def __post_init__(self) -> None:
        for name in ("kill_grace", "start", "health_check", "stop", "drain"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < INF):
                raise InvalidRequest(f"PoolTimeouts.{name} must be a positive number of seconds, got {value!r}")


@dataclass
class Actions:
    """What one supervisor step decided under the lock and does after releasing it."""

    signals: list[tuple[WorkerProcess, int]] = field(default_factory=list)
    sends: list[tuple[WorkerProcess, tuple[Any, ...]]] = field(default_factory=list)
    fails: list[Fail] = field(default_factory=list)
    checks: list[WorkerProcess] = field(default_factory=list)
    spawns: int = 0


class PoolCore:
    """The shared state of a pool (set up by ``WorkerPool.__init__``) and the helpers every part uses."""

    _min: int
    _max: int
    _task_timeout: float | None
    _health_interval: float | None
    _idle_shrink_after: float
    _max_tasks: int | None
    _max_memory_mb: float | None
    _prefetch: int
    _health_blob: bytes | None
    _init_blob: bytes | None
    _timeouts: PoolTimeouts
    _lock: threading.Lock
    _state: PoolState
    _pending: deque[Task]
    _workers: list[WorkerProcess]  # every worker not yet reaped
    _idle: list[WorkerProcess]  # idle workers, most recently freed last
    _draining: list[WorkerProcess]  # reaped, waiting for the lane to deliver the rest
    _ids: itertools.count[int]
    _counts: dict[str, int]
    _owed: int  # replacements due for workers that went away involuntarily
    _filled: bool  # the first fill to min_workers is neither a restart nor a scale-up
    _start_failures: deque[float]
    _last_start_failure: str
    _broken: RestartStorm | None
    _abort_running: bool
    _planned: float  # when the supervisor will wake next
    _held_until: float  # spawns held back (STARTING_AT_ONCE) are due again by then
    _wake_r: int
    _wake_w: int
    _wake_armed: bool
    _supervisor: threading.Thread | None
    _zygote: Zygote | None | Literal[False]  # forks the workers (Linux): started with the first; False: given up
    _preload: tuple[str, ...]  # modules the zygote imports

    def _wake(self) -> None:
        if self._wake_armed:
            return
        self._wake_armed = True
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending anyway) or closed (the pool is closed)

    def _start_failure(self, worker: WorkerProcess | None, now: float, what: str = "") -> list[Fail]:
        """Under the lock: count a fresh worker that failed to start (implemented by ``Supervisor``)."""
        raise NotImplementedError

    def _retire(
        self, worker: WorkerProcess, reason: str, now: float, *, replace: bool = False, scale_down: bool = False
    ) -> bool:
        """Under the lock: tell the worker to exit (the caller sends STOP); True for convenience."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = WorkerState.STOPPING
        worker.stop_reason = reason
        worker.replace = replace
        worker.deadline = now + self._timeouts.stop
        if scale_down:
            self._counts["scale_downs"] += 1
        return True

    def _finish(self, worker: WorkerProcess) -> list[Fail]:
        """Under the lock: the worker is reaped and its messages delivered; fail its task, if any."""
        if worker in self._draining:
            self._draining.remove(worker)
        task, worker.task = worker.task, None
        ahead = list(worker.ahead)
        worker.ahead.clear()
        fails: list[Fail] = []
        if self._state in (PoolState.RUNNING, PoolState.CLOSING) and worker.stop_reason != "shutdown":
            self._pending.extendleft(reversed(ahead))  # never started: the next free workers run them, in order
        else:
            fails += [
                (t, PoolClosed(f"task {t.id} was stopped: the pool was shut down before it ran"), None) for t in ahead
            ]
        if task is None:
            return fails
        if worker.stop_reason == "timeout":
            assert task.timeout is not None
            exc: BaseException = TaskTimeout(
                f"task {task.id} ran past its timeout of {task.timeout:g}s; its worker (pid {worker.pid}) "
                "and everything it started were killed and replaced. Raise the timeout or make the task faster"
            )
            return [*fails, (task, exc, "timeouts")]
        if worker.stop_reason == "shutdown":
            return [
                *fails,
                (task, PoolClosed(f"task {task.id} was stopped: the pool was shut down while it ran"), None),
            ]
        code = worker.returncode
        exc = WorkerCrashed(
            f"worker pid {worker.pid} {worker.describe_exit()} while running task {task.id}; the pool "
            "replaced it. The task or a library it uses ended the process (os._exit, a signal, a native "
            "crash, memory exhaustion)",
            exitcode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            pid=worker.pid,
        )
        return [*fails, (task, exc, None)]

    def _fail_all(self, fails: list[Fail]) -> None:
        counted = [(kind, fail(task, exc)) for task, exc, kind in fails]
        if any(done for _, done in counted):
            with self._lock:
                for kind, done in counted:
                    if done:
                        self._counts["failed"] += 1
                        if kind is not None:
                            self._counts[kind] += 1


def close_fds(*fds: int) -> None:
    """Close what is still open of ``fds``."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# Pools still running at interpreter exit: stopped by an atexit hook in _pool.py.
live_pools: weakref.WeakSet[Any] = weakref.WeakSet()
