"""``bridge.WorkerPool``: a self-healing, elastic pool of worker subprocesses with hard timeouts.

Data flow (one lock, ``WorkerPool._lock``, guards every piece of state below)::

  submit(fn, *args) ─► Task(future, cloudpickled call) ─► an idle worker? ──yes──┐
                                  │ no                                          │
                                  ▼                                             ▼
                          pending (deque) ──► the next free worker ──► socket: TASK(id, call)
                                                                               │
      bridge._worker (own process group): main thread runs fn(*args) ◄────────┘
                          │  Channel.call / Channel.send / the result
                          ▼
      lane thread, one per worker, reads its socket in order:
        CALL ─► on_call(payload) ─► REPLY        SEND ─► on_send(payload)
        DONE ─► hand the worker its next pending task, then resolve the future
        READY / PONG ─► the worker becomes idle (or takes pending work)

      supervisor thread: wait(pidfds + wake pipe, timeout = the next deadline)
        ├─ a pidfd fires ─► reap; once the lane has drained the socket, fail the
        │                   task (TaskTimeout / WorkerCrashed); owe a replacement
        ├─ deadlines ─► task timeout: SIGTERM the group, SIGKILL after kill_grace;
        │               start / ping / stop timeouts the same way
        ├─ health ─► idle workers: RSS over max_memory_mb, or PING ─► PONG
        └─ scaling ─► spawn (min, demand, replacements; restart-storm guard),
                      stop idle workers after idle_shrink_after, resize()

Task bookkeeping lives in ``bridge._pool_tasks``, worker processes in
``bridge._pool_workers``, the worker's side in ``bridge._worker``.

Reserved keyword names of ``submit``: ``timeout``, ``on_call`` and ``on_send``
go to the pool, every other keyword argument to the task.
"""

from __future__ import annotations

import atexit
import enum
import itertools
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import cloudpickle

from bridge import _worker
from bridge._errors import InvalidRequest, PoolClosed, RestartStorm, TaskTimeout, WorkerCrashed
from bridge._pool_tasks import (
    ChannelError,
    OnCall,
    OnSend,
    RemoteTraceback,
    SerializationError,
    Task,
    answer_call,
    check_target,
    deliver_send,
    encode_call,
    fail,
    run_inline,
    settle,
)
from bridge._pool_workers import WorkerProcess, WorkerState
from bridge._worker import Channel, worker_channel

logger = logging.getLogger("bridge.pool")

_INF = float("inf")
_CAPACITY = (WorkerState.STARTING, WorkerState.IDLE, WorkerState.CHECKING, WorkerState.BUSY)


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
            if not (isinstance(value, (int, float)) and 0 < value < _INF):
                raise InvalidRequest(f"PoolTimeouts.{name} must be a positive number of seconds, got {value!r}")


@dataclass
class _Actions:
    """What one supervisor step decided under the lock and does after releasing it."""

    signals: list[tuple[WorkerProcess, int]] = field(default_factory=list)
    sends: list[tuple[WorkerProcess, tuple[Any, ...]]] = field(default_factory=list)
    fails: list[tuple[Task, BaseException, str | None]] = field(default_factory=list)
    checks: list[WorkerProcess] = field(default_factory=list)
    spawns: int = 0


class WorkerPool:
    """A pool of worker subprocesses: elastic, with hard per-task timeouts, replacing crashed workers.

    Args:
        min_workers: workers kept alive even when idle.
        max_workers: the most workers at once; the pool grows toward it while tasks wait.
        task_timeout: default seconds a task may run (from when it starts on a
            worker) before its worker's process group is killed; None for no limit.
        health_check_interval: seconds between pings of an idle worker; None disables.
        idle_shrink_after: seconds an idle worker beyond ``min_workers`` lives on.
        max_tasks_per_worker: recycle a worker after this many tasks; None for never.
        max_memory_mb: replace an idle worker whose resident memory (with every
            process it started) exceeds this; None for no limit.
        health_check: a callable (or ``"module:function"``) run in idle workers at
            each ping; falsy or raising means the worker is replaced.
        timeouts: the phases of stopping and watching workers (``PoolTimeouts``).

    Example:
        >>> from bridge import WorkerPool
        >>> with WorkerPool(min_workers=1, max_workers=2) as pool:  # doctest: +SKIP
        ...     pool.submit(pow, 2, 10, timeout=5.0).result()
        1024
    """

    #: A restart storm is this many fresh workers in a row dying before READY ...
    storm_limit = 5
    #: ... within this many seconds.
    storm_window = 60.0

    def __init__(
        self,
        min_workers: int = 1,
        max_workers: int = 4,
        task_timeout: float | None = None,
        health_check_interval: float | None = 1.0,
        idle_shrink_after: float = 10.0,
        max_tasks_per_worker: int | None = None,
        max_memory_mb: float | None = None,
        health_check: Callable[[], Any] | str | None = None,
        *,
        timeouts: PoolTimeouts | None = None,
    ) -> None:
        _check_bounds(min_workers, max_workers)
        _check_positive("task_timeout", task_timeout)
        _check_positive("health_check_interval", health_check_interval)
        _check_positive("idle_shrink_after", idle_shrink_after)
        _check_positive("max_tasks_per_worker", max_tasks_per_worker)
        _check_positive("max_memory_mb", max_memory_mb)
        if health_check is not None:
            check_target(health_check)
        self._min, self._max = min_workers, max_workers
        self._task_timeout = task_timeout
        self._health_interval = health_check_interval
        self._idle_shrink_after = idle_shrink_after
        self._max_tasks = max_tasks_per_worker
        self._max_memory_mb = max_memory_mb
        try:
            self._health_blob = None if health_check is None else cloudpickle.dumps(health_check)
        except Exception as exc:
            raise InvalidRequest(
                f"health_check {health_check!r} cannot be pickled for the workers ({type(exc).__name__}: {exc}); "
                "pass a module-level function or a 'module:function' string"
            ) from exc
        self._timeouts = timeouts or PoolTimeouts()

        self._lock = threading.Lock()
        self._state = PoolState.CREATED
        self._pending: deque[Task] = deque()
        self._workers: list[WorkerProcess] = []  # every worker not yet reaped
        self._idle: list[WorkerProcess] = []  # idle workers, most recently freed last
        self._draining: list[WorkerProcess] = []  # reaped, waiting for the lane to finish
        self._ids = itertools.count(1)
        self._counts = dict.fromkeys(
            ("completed", "failed", "timeouts", "crashes", "restarts", "scale_ups", "scale_downs"), 0
        )
        self._owed = 0  # replacements due for workers that went away involuntarily
        self._filled = False  # the first fill to min_workers is neither a restart nor a scale-up
        self._start_failures: deque[float] = deque()
        self._last_start_failure = ""
        self._broken: RestartStorm | None = None
        self._abort_running = False
        self._planned = _INF  # when the supervisor will wake next
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Closed when the pool is collected, never earlier: a late _wake() from a lane
        # thread must not write into a reused descriptor.
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w).atexit = False
        self._wake_armed = False
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> PoolState:
        """Where the pool is in its lifecycle."""
        return self._state

    def submit(
        self,
        fn: Callable[..., Any] | str,
        /,
        *args: Any,
        timeout: float | None = None,
        on_call: OnCall | None = None,
        on_send: OnSend | None = None,
        **kwargs: Any,
    ) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; a ``concurrent.futures.Future`` of its result.

        Args:
            fn: a callable (lambdas and closures travel by value with cloudpickle)
                or ``"package.module:function"``, imported in the worker.
            timeout: seconds the task may run once started on a worker; None uses
                the pool's ``task_timeout``, ``math.inf`` means no limit.
            on_call: answers ``worker_channel().call(payload)`` from the task; runs
                on this worker's lane thread, may block; its exception is raised in the task.
            on_send: receives ``worker_channel().send(payload)``, in order; every
                message sent before the worker died arrives before the future fails.

        The future fails with ``TaskTimeout``, ``WorkerCrashed`` (exit code, signal
        and pid attached), ``SerializationError``, or the task's own exception
        (same type, the remote traceback as its ``__cause__``).

        Raises:
            PoolClosed: the pool is shut down (``RestartStorm`` if it gave up respawning).
            InvalidRequest: ``fn`` is neither callable nor ``"module:function"``.
        """
        check_target(fn)
        limit = self._task_timeout if timeout is None else timeout
        _check_positive("timeout", limit)
        future: Future[Any] = Future()
        try:
            blob = encode_call(fn, args, kwargs)
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        task = Task(next(self._ids), blob, future, None if limit == _INF else limit, on_call, on_send)
        with self._lock:
            self._check_open()
            if self._state is PoolState.CREATED:
                self._start()
            worker = self._idle.pop() if self._idle else None
            if worker is not None and not self._assign(worker, task):
                self._idle.append(worker)
                return future  # cancelled already (not possible yet, but cheap to honour)
            if worker is None:
                self._pending.append(task)
                wake = len(self._workers) < self._max
        if worker is not None:
            self._send_task(worker, task)
        elif wake:
            self._wake()
        return future

    def map(self, fn: Callable[..., Any] | str, items: Iterable[Any], timeout: float | None = None) -> Iterator[Any]:
        """``fn(item)`` for every item in the pool; the results in the order of ``items``.

        All items are submitted at once; the iterator raises the first failed
        item's exception when it gets there, and cancels what has not started yet
        if it is closed early. ``timeout`` is per task, as in ``submit``.
        """
        futures = [self.submit(fn, item, timeout=timeout) for item in items]

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def stats(self) -> dict[str, int]:
        """Counts: workers, busy, idle, starting, queued, completed, failed (including
        timeouts and crashes), timeouts, crashes (workers that died unasked),
        restarts (replacement workers), scale_ups, scale_downs."""
        with self._lock:
            states = [w.state for w in self._workers]
            return {
                "workers": len(states),
                "busy": sum(w.task is not None for w in self._workers),
                "idle": sum(s is WorkerState.IDLE or s is WorkerState.CHECKING for s in states),
                "starting": states.count(WorkerState.STARTING),
                "queued": len(self._pending),
                **self._counts,
            }

    def resize(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Change the bounds while running: grows at once to the new minimum, stops extra idle workers."""
        with self._lock:
            new_min = self._min if min_workers is None else min_workers
            new_max = self._max if max_workers is None else max_workers
            _check_bounds(new_min, new_max)
            self._check_open()
            self._min, self._max = new_min, new_max
            if self._state is PoolState.CREATED:
                self._start()
        self._wake()

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop taking work; finish (or with ``cancel_pending``, cancel) queued tasks; stop the workers.

        Running tasks finish (within their timeouts). With ``wait`` this blocks
        until every worker has exited. Calling it again is harmless.
        """
        with self._lock:
            if self._state is PoolState.CREATED:
                self._state = PoolState.CLOSED
                return
            if self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSING
            cancelled = list(self._pending) if cancel_pending else []
            if cancel_pending:
                self._pending.clear()
        for task in cancelled:
            task.future.cancel()
        self._wake()
        supervisor = self._supervisor
        if wait and supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join()

    def __enter__(self) -> WorkerPool:
        with self._lock:
            self._check_open()
            if self._state is PoolState.CREATED:
                self._start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            # Leaving on an error (Ctrl-C included): do not wait for work nobody will read.
            self._abort()
        self.shutdown(wait=True, cancel_pending=exc_type is not None)

    def __repr__(self) -> str:
        s = self.stats()
        return f"<WorkerPool {self._state.value} workers={s['workers']} busy={s['busy']} queued={s['queued']}>"

    # ------------------------------------------------------------- task bookkeeping

    def _check_open(self) -> None:
        if self._broken is not None:
            raise RestartStorm(str(self._broken))
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            raise PoolClosed("the WorkerPool is shut down and takes no more tasks; create a new WorkerPool")

    def _assign(self, worker: WorkerProcess, task: Task) -> bool:
        """Under the lock: make ``task`` the worker's current task, unless it was cancelled."""
        if not task.future.set_running_or_notify_cancel():
            return False
        start = time.monotonic()
        task.started = start
        task.deadline = None if task.timeout is None else start + task.timeout
        worker.state = WorkerState.BUSY
        worker.task = task
        return True

    def _next_task(self, worker: WorkerProcess) -> Task | None:
        """Under the lock: give the worker the oldest pending task that was not cancelled."""
        while self._pending:
            task = self._pending.popleft()
            if self._assign(worker, task):
                return task
        return None

    def _free(self, worker: WorkerProcess, now: float) -> Task | None:
        """Under the lock: a worker became available; its next task, or it joins the idle ones."""
        task = self._next_task(worker)
        if task is None:
            worker.state = WorkerState.IDLE
            worker.idle_since = now
            self._idle.append(worker)
            # The supervisor may be sleeping with no deadline in sight: the health
            # check and the idle shrink of this worker are new ones.
            due = now + self._idle_shrink_after
            if self._health_interval is not None:
                due = min(due, worker.last_health + self._health_interval)
            if due < self._planned:
                self._wake()
        return task

    def _send_task(self, worker: WorkerProcess, task: Task) -> None:
        # Wake the supervisor only when this deadline is sooner than it plans to look.
        if task.deadline is not None and task.deadline < self._planned:
            self._wake()
        worker.send((_worker.TASK, task.id, task.blob))

    def _task_of(self, worker: WorkerProcess, task_id: int) -> Task | None:
        task = worker.task
        return task if task is not None and task.id == task_id else None

    # Lane threads call these, in the order each worker sent its messages.

    def _on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == _worker.DONE:
            self._on_done(worker, message)
        elif kind == _worker.CALL:
            ok, blob = answer_call(self._task_of(worker, message[1]), message[3])
            worker.send((_worker.REPLY, message[2], ok, blob))
        elif kind == _worker.SEND:
            deliver_send(self._task_of(worker, message[1]), message[2])
        elif kind == _worker.READY:
            self._on_ready(worker)
        elif kind == _worker.PONG:
            self._on_pong(worker, message)

    def _on_done(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        now = time.monotonic()
        stop = False
        following = None
        with self._lock:
            task = worker.task
            if task is None or task.id != message[1]:
                return
            worker.task = None
            worker.tasks_done += 1
            self._counts["completed" if message[2] == _worker.OK else "failed"] += 1
            if worker.state is WorkerState.BUSY:
                if self._max_tasks is not None and worker.tasks_done >= self._max_tasks:
                    stop = self._retire(worker, "recycled after max_tasks_per_worker tasks", now, replace=True)
                elif len(self._workers) > self._max:
                    stop = self._retire(worker, "above max_workers after resize()", now, scale_down=True)
                else:
                    following = self._free(worker, now)
        if stop:
            worker.send((_worker.STOP,))
            self._wake()
        elif following is not None:
            self._send_task(worker, following)
        elif self._state is not PoolState.RUNNING:
            self._wake()  # closing: the supervisor stops idle workers
        if not settle(task, message) and message[2] == _worker.OK:
            with self._lock:  # an OK result that could not be unpickled here
                self._counts["completed"] -= 1
                self._counts["failed"] += 1

    def _on_ready(self, worker: WorkerProcess) -> None:
        now = time.monotonic()
        with self._lock:
            if worker.state is not WorkerState.STARTING:
                return
            worker.ready_at = worker.last_health = now
            worker.deadline = None
            self._start_failures.clear()
            task = self._free(worker, now)
        if task is not None:
            self._send_task(worker, task)
        self._wake()

    def _on_pong(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        _, seq, ok, reason = message
        now = time.monotonic()
        task = None
        with self._lock:
            if worker.state is not WorkerState.CHECKING or seq != worker.ping_seq:
                return
            if ok:
                worker.last_health = now
                worker.deadline = None
                task = self._free(worker, now)
            else:
                self._retire(worker, f"failed its health check ({reason})", now, replace=True)
        if task is not None:
            self._send_task(worker, task)
        elif not ok:
            logger.warning("pool: worker %d %s; replacing it", worker.pid, reason)
            worker.send((_worker.STOP,))
            self._wake()

    def _on_lane_closed(self, worker: WorkerProcess) -> None:
        with self._lock:
            worker.eof = True
            fails = self._finish(worker) if worker in self._draining else []
        self._fail_all(fails)

    def _finish(self, worker: WorkerProcess) -> list[tuple[Task, BaseException, str | None]]:
        """Under the lock: the worker is reaped and its messages delivered; fail its task, if any."""
        if worker in self._draining:
            self._draining.remove(worker)
        task, worker.task = worker.task, None
        if task is None:
            return []
        if worker.stop_reason == "timeout":
            assert task.timeout is not None
            exc: BaseException = TaskTimeout(
                f"task {task.id} ran past its timeout of {task.timeout:g}s; its worker (pid {worker.pid}) "
                "and everything it started were killed and replaced. Raise the timeout or make the task faster"
            )
            return [(task, exc, "timeouts")]
        if worker.stop_reason == "shutdown":
            return [(task, PoolClosed(f"task {task.id} was stopped: the pool was shut down while it ran"), None)]
        code = worker.returncode
        exc = WorkerCrashed(
            f"worker pid {worker.pid} {worker.describe_exit()} while running task {task.id}; the pool "
            "replaced it. The task or a library it uses ended the process (os._exit, a signal, a native "
            "crash, memory exhaustion)",
            exitcode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            pid=worker.pid,
        )
        return [(task, exc, None)]

    def _fail_all(self, fails: list[tuple[Task, BaseException, str | None]]) -> None:
        counted = [(kind, fail(task, exc)) for task, exc, kind in fails]
        if any(done for _, done in counted):
            with self._lock:
                for kind, done in counted:
                    if done:
                        self._counts["failed"] += 1
                        if kind is not None:
                            self._counts[kind] += 1

    # ------------------------------------------------------------ worker management

    def _start(self) -> None:
        """Under the lock: CREATED -> RUNNING, start the supervisor (which spawns the workers)."""
        self._state = PoolState.RUNNING
        self._supervisor = threading.Thread(target=self._supervise, name="studyhall-pool-supervisor", daemon=True)
        self._supervisor.start()
        _live_pools.add(self)

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

    def _kill(self, worker: WorkerProcess, reason: str, now: float, actions: _Actions, *, replace: bool = True) -> None:
        """Under the lock: SIGTERM the worker's group now, SIGKILL after the grace."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = WorkerState.KILLING
        worker.stop_reason = reason
        worker.replace = replace
        worker.deadline = now + self._timeouts.kill_grace
        actions.signals.append((worker, signal.SIGTERM))

    def _supervise(self) -> None:
        try:
            while self._step():
                pass
        except BaseException:  # noqa: BLE001 - a bug here must not leave workers or futures behind
            logger.exception("pool supervisor failed; stopping every worker")
            self._emergency_stop("the pool's supervisor failed (see the log); create a new WorkerPool")

    def _step(self) -> bool:
        with self._lock:
            if self._state is PoolState.CLOSED:
                return False
            now = time.monotonic()
            sentinels = {w.sentinel: w for w in self._workers}
            self._planned = self._next_deadline(now)
        timeout = None if self._planned == _INF else max(0.0, self._planned - now)
        ready = wait([self._wake_r, *sentinels], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        # Disarm after draining and before planning: a wake-up that found the flag
        # still set changed its state before this line, so the plan below sees it;
        # one after this line writes a byte that the next wait() sees.
        self._wake_armed = False
        exited = [sentinels[s] for s in ready if s in sentinels]  # type: ignore[index]
        for worker in exited:
            worker.reap()
        actions = _Actions()
        with self._lock:
            now = time.monotonic()
            for worker in exited:
                actions.fails.extend(self._on_exit(worker, now))
            self._plan(now, actions)
        self._act(actions)
        return True

    def _on_exit(self, worker: WorkerProcess, now: float) -> list[tuple[Task, BaseException, str | None]]:
        """Under the lock: a worker process is gone; account for it and owe a replacement if due."""
        previous = worker.state
        worker.state = WorkerState.EXITED
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        running = self._state is PoolState.RUNNING and self._broken is None
        fails: list[tuple[Task, BaseException, str | None]] = []
        if worker.ready_at is None:
            fails = self._start_failure(worker, now)
        elif previous in (WorkerState.IDLE, WorkerState.CHECKING, WorkerState.BUSY):
            self._counts["crashes"] += 1
            worker.replace = True
            # A crash under a task is reported on its future; an idle worker's only here.
            level = logging.DEBUG if worker.task is not None else logging.WARNING
            logger.log(level, "pool: worker %d %s; replacing it", worker.pid, worker.describe_exit())
        if running and worker.replace:
            self._owed += 1
        if worker.task is None:
            return fails
        if worker.eof:
            return fails + self._finish(worker)
        worker.drain_deadline = now + self._timeouts.drain
        self._draining.append(worker)
        return fails

    def _start_failure(self, worker: WorkerProcess | None, now: float, what: str = "") -> list[tuple[Task, BaseException, str | None]]:
        """Under the lock: a fresh worker died before READY; too many in a row is a restart storm."""
        if worker is not None:
            worker.replace = True
            what = f"the last one (pid {worker.pid}) {worker.describe_exit()}"
        self._last_start_failure = what
        failures = self._start_failures
        failures.append(now)
        while failures and failures[0] < now - self.storm_window:
            failures.popleft()
        if len(failures) >= self.storm_limit and self._broken is None:
            return self._break(len(failures))
        return []

    def _break(self, count: int) -> list[tuple[Task, BaseException, str | None]]:
        """Under the lock: stop respawning; the queued tasks are returned to be failed."""
        self._broken = RestartStorm(
            f"{count} fresh workers in a row died before they could take a task "
            f"(within {self.storm_window:g}s; {self._last_start_failure}). Something ends the worker "
            "interpreter at start-up: read the workers' stderr above and check PYTHONHOME, PYTHONPATH, "
            "sitecustomize and the health_check callable (unpickled at start). The pool stopped "
            "respawning; fix the cause and create a new WorkerPool"
        )
        logger.error("pool: %s", self._broken)
        self._owed = 0
        if self._state is PoolState.RUNNING:
            self._state = PoolState.CLOSING
        victims = [(task, RestartStorm(str(self._broken)), None) for task in self._pending]
        self._pending.clear()
        return victims  # type: ignore[return-value]

    def _plan(self, now: float, actions: _Actions) -> None:
        """Under the lock: everything the supervisor does on a wake-up, decided in one place."""
        self._check_deadlines(now, actions)
        self._shrink(now, actions)
        self._schedule_health(now, actions)
        actions.spawns = self._spawns_needed()
        if (
            self._state is PoolState.CLOSING
            and not self._workers
            and not self._draining
            and not self._pending
            and actions.spawns == 0
        ):
            self._state = PoolState.CLOSED
            _live_pools.discard(self)

    def _check_deadlines(self, now: float, actions: _Actions) -> None:
        for worker in self._workers:
            state = worker.state
            if state is WorkerState.BUSY:
                task = worker.task
                if self._abort_running:
                    self._kill(worker, "shutdown", now, actions, replace=False)
                elif task is not None and task.deadline is not None and task.deadline <= now:
                    self._kill(worker, "timeout", now, actions)
            elif worker.deadline is None or worker.deadline > now:
                continue
            elif state is WorkerState.KILLING:
                actions.signals.append((worker, signal.SIGKILL))
                worker.deadline = None
            elif state is WorkerState.STARTING:
                self._kill(worker, f"did not start within {self._timeouts.start:g}s", now, actions)
            elif state is WorkerState.CHECKING:
                self._kill(worker, f"did not answer a ping within {self._timeouts.health_check:g}s", now, actions)
            elif state is WorkerState.STOPPING:
                self._kill(worker, worker.stop_reason, now, actions, replace=worker.replace)
        for worker in list(self._draining):
            if worker.drain_deadline is None or worker.drain_deadline > now:
                continue
            if worker.handling:
                # A slow on_call/on_send is still delivering: the messages after it come first.
                worker.drain_deadline = now + self._timeouts.drain
            else:
                # Something the worker started still holds its socket open; stop waiting for it.
                actions.fails.extend(self._finish(worker))

    def _shrink(self, now: float, actions: _Actions) -> None:
        closing = self._state is not PoolState.RUNNING
        if closing and not self._pending:
            floor = 0
        elif closing:
            return
        else:
            floor = self._min
        capacity = sum(w.state in _CAPACITY for w in self._workers)
        while self._idle and capacity > floor:
            oldest = self._idle[0]  # the idle list is kept most-recently-freed last
            if closing:
                self._retire(oldest, "the pool is closing", now)
            elif len(self._workers) > self._max:
                self._retire(oldest, "above max_workers after resize()", now, scale_down=True)
            elif oldest.idle_since + self._idle_shrink_after <= now:
                self._retire(oldest, f"idle for {self._idle_shrink_after:g}s", now, scale_down=True)
            else:
                break
            actions.sends.append((oldest, (_worker.STOP,)))
            capacity -= 1

    def _schedule_health(self, now: float, actions: _Actions) -> None:
        if self._health_interval is None or self._state is not PoolState.RUNNING:
            return
        for worker in list(self._idle):
            if worker.last_health + self._health_interval <= now:
                self._idle.remove(worker)
                worker.state = WorkerState.CHECKING
                worker.ping_seq += 1
                worker.deadline = now + self._timeouts.health_check
                actions.checks.append(worker)

    def _spawns_needed(self) -> int:
        if self._broken is not None or self._state not in (PoolState.RUNNING, PoolState.CLOSING):
            return 0
        running = self._state is PoolState.RUNNING
        capacity = sum(w.state in _CAPACITY for w in self._workers)
        busy = sum(w.state is WorkerState.BUSY for w in self._workers)
        target = min(self._max, max(self._min if running else 0, busy + len(self._pending)))
        owed = self._owed if running else 0
        return max(0, min(max(target - capacity, owed), self._max - len(self._workers)))

    def _next_deadline(self, now: float) -> float:
        """Under the lock: the soonest moment something needs the supervisor."""
        soonest = _INF
        for worker in self._workers:
            if worker.deadline is not None:
                soonest = min(soonest, worker.deadline)
            task = worker.task
            if worker.state is WorkerState.BUSY and task is not None and task.deadline is not None:
                soonest = min(soonest, task.deadline)
        for worker in self._draining:
            if worker.drain_deadline is not None:
                soonest = min(soonest, worker.drain_deadline)
        if self._idle:
            if self._state is PoolState.RUNNING and len(self._workers) > self._min:
                soonest = min(soonest, self._idle[0].idle_since + self._idle_shrink_after)
            if self._health_interval is not None:
                soonest = min(soonest, min(w.last_health for w in self._idle) + self._health_interval)
        return soonest

    def _act(self, actions: _Actions) -> None:
        """Outside the lock: carry out what ``_plan`` decided."""
        for worker, sig in actions.signals:
            worker.signal_group(sig)
        for worker, message in actions.sends:
            worker.send(message)
        # Replacements first: when a failed future wakes its caller, the new worker is on its way.
        for _ in range(actions.spawns):
            self._spawn()
        self._fail_all(actions.fails)
        for worker in actions.checks:
            self._check_health(worker)

    def _check_health(self, worker: WorkerProcess) -> None:
        rss = worker.memory_mb() if self._max_memory_mb is not None else 0.0
        with self._lock:
            if worker.state is not WorkerState.CHECKING:
                return
            over = self._max_memory_mb is not None and rss > self._max_memory_mb
            if over:
                self._retire(
                    worker, f"uses {rss:.0f} MiB, over max_memory_mb={self._max_memory_mb:g}", time.monotonic(),
                    replace=True,
                )
            seq = worker.ping_seq
        if over:
            logger.warning("pool: worker %d uses %.0f MiB (max_memory_mb=%g); replacing it", worker.pid, rss, self._max_memory_mb)
            worker.send((_worker.STOP,))
        else:
            worker.send((_worker.PING, seq))

    def _spawn(self) -> None:
        now = time.monotonic()
        try:
            worker = WorkerProcess(list(sys.path), self._health_blob, self._on_message, self._on_lane_closed, now)
        except OSError as exc:
            logger.error("pool: could not start a worker process: %s", exc)
            with self._lock:
                fails = self._start_failure(None, now, f"starting one failed with {type(exc).__name__}: {exc}")
            self._fail_all(fails)
            return
        with self._lock:
            worker.deadline = now + self._timeouts.start
            self._workers.append(worker)
            if self._owed:
                self._owed -= 1
                self._counts["restarts"] += 1
            elif self._filled or len(self._workers) > self._min:
                self._counts["scale_ups"] += 1
            if len(self._workers) >= self._min:
                self._filled = True
        worker.start_lane()

    # ------------------------------------------------------------------- stopping

    def _wake(self) -> None:
        if self._wake_armed:
            return
        self._wake_armed = True
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending anyway) or closed (the pool is closed)

    def _abort(self) -> None:
        """Cancel queued tasks and kill running ones (their futures fail with PoolClosed)."""
        with self._lock:
            self._abort_running = True
        self._wake()

    def _emergency_stop(self, reason: str) -> None:
        """The supervisor cannot go on: kill every worker group and fail every future."""
        with self._lock:
            self._state = PoolState.CLOSED
            workers = list(self._workers) + list(self._draining)
            tasks = list(self._pending) + [w.task for w in workers if w.task is not None]
            self._pending.clear()
            _live_pools.discard(self)
        for worker in workers:
            worker.signal_group(signal.SIGKILL)
        for task in tasks:
            fail(task, PoolClosed(reason))


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _check_bounds(min_workers: int, max_workers: int) -> None:
    if not (isinstance(min_workers, int) and isinstance(max_workers, int)) or not 0 <= min_workers <= max_workers or max_workers < 1:
        raise InvalidRequest(
            f"need 0 <= min_workers <= max_workers and max_workers >= 1, got min_workers={min_workers!r}, "
            f"max_workers={max_workers!r}"
        )


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise InvalidRequest(f"{name} must be positive (or None for no limit), got {value!r}")


# Pools still running at interpreter exit: stop their workers rather than leave
# them to notice the closed socket one by one.
_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _stop_live_pools() -> None:
    for pool in list(_live_pools):
        try:
            pool._abort()
            pool.shutdown(wait=False, cancel_pending=True)
            if pool._supervisor is not None:
                pool._supervisor.join(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


__all__ = [
    "Channel",
    "ChannelError",
    "PoolState",
    "PoolTimeouts",
    "RemoteTraceback",
    "SerializationError",
    "WorkerPool",
    "run_inline",
    "worker_channel",
]
