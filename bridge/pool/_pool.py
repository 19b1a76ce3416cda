"""``bridge.WorkerPool``: a self-healing, elastic pool of worker subprocesses with hard timeouts.

Data flow (one lock, ``WorkerPool._lock``, guards every piece of state below)::

  submit(fn, *args) ─► Task(future, cloudpickled call) ─► an idle worker? ──yes──┐
                                  │ no                                          │
                                  ▼                                             ▼
                          pending (deque) ──► the next free worker ──► socket: TASK(id, call)
                                                                               │
      pool/_worker.py (own process group): main thread runs fn(*args) ◄────────┘
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

Where each piece lives, in ``bridge/pool/``: ``_pool.py`` (this module), the public
API and lifecycle; ``_dispatch.py``, handing tasks to workers and the lanes'
handlers; ``_supervisor.py``, the supervisor thread (worker management);
``_core.py``, the shared state and what ends a task; ``_tasks.py``, one task
(pickling, results, errors, ``run_inline``); ``_workers.py``, one worker process;
``_worker.py``, the worker's side and ``worker_channel()``.

Reserved keyword names of ``submit``: ``timeout``, ``on_call`` and ``on_send``
go to the pool, every other keyword argument to the task.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import cloudpickle

from studyhall.bridge._errors import InvalidRequest, PoolClosed, RestartStorm, SerializationError
from studyhall.bridge.pool._core import INF, PoolState, PoolTimeouts, close_fds, live_pools
from studyhall.bridge.pool._dispatch import TaskDispatch
from studyhall.bridge.pool._supervisor import Supervisor
from studyhall.bridge.pool._tasks import OnCall, OnSend, Task, check_target, encode_call, fail
from studyhall.bridge.pool._workers import WorkerProcess, WorkerState

MAX_PREFETCH = 64


class WorkerPool(TaskDispatch, Supervisor):
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
        initializer: a callable (or ``"module:function"``) run once in every worker
            before it takes work: imports and caches paid there do not count toward
            a task's timeout. One that raises makes a failed start (repeated, a
            ``RestartStorm`` naming its error).
        prefetch: how many tasks a busy worker is sent ahead of time, so that it never
            waits for the pool between tasks (for many short tasks, once the pool is
            at ``max_workers``; 8 to 32 suit tiny tasks). Such a task counts as running
            (``cancel()`` returns False), waits behind that worker's earlier ones even
            if another worker frees first, and is run elsewhere if its worker dies
            first. 0 (default) hands a task out only when a worker is free. Not with
            ``max_memory_mb``.
        timeouts: the phases of stopping and watching workers (``PoolTimeouts``).
        preload: modules imported once, before the workers are forked, so that each
            starts with them loaded (on Linux, where workers are forked from a warm
            zygote process; elsewhere they are ignored). Only modules that start no
            threads when imported: a fork copies no threads.

    Example:
        >>> from studyhall.bridge import WorkerPool
        >>> with WorkerPool(min_workers=1, max_workers=2) as pool:  # doctest: +SKIP
        ...     pool.submit(pow, 2, 10, timeout=5.0).result()
        1024
    """

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
        initializer: Callable[[], Any] | str | None = None,
        prefetch: int = 0,
        timeouts: PoolTimeouts | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        _check_bounds(min_workers, max_workers)
        _check_positive("task_timeout", task_timeout)
        _check_positive("health_check_interval", health_check_interval)
        _check_positive("idle_shrink_after", idle_shrink_after, optional=False)
        _check_positive("max_tasks_per_worker", max_tasks_per_worker, integer=True)
        _check_positive("max_memory_mb", max_memory_mb, finite=True)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= MAX_PREFETCH:
            raise InvalidRequest(
                f"prefetch must be an int from 0 to {MAX_PREFETCH} (tasks sent ahead to a busy worker); got {prefetch!r}"
            )
        if prefetch and max_memory_mb is not None:
            raise InvalidRequest(
                "prefetch=1 cannot be combined with max_memory_mb: a worker replaced for its memory "
                "would still run the task sent ahead to it; use one or the other"
            )
        if isinstance(preload, str) or not all(
            isinstance(m, str) and all(p.isidentifier() for p in m.split(".")) for m in preload
        ):
            raise InvalidRequest(
                f"preload must be a sequence of module names such as ['numpy', 'mypkg.tasks']; got {preload!r}"
            )
        if timeouts is not None and not isinstance(timeouts, PoolTimeouts):
            raise InvalidRequest(f"timeouts must be a PoolTimeouts(...) or None, got {type(timeouts).__name__}")
        self._prefetch = prefetch
        self._min, self._max = min_workers, max_workers
        self._task_timeout = task_timeout
        self._health_interval = health_check_interval
        self._idle_shrink_after = idle_shrink_after
        self._max_tasks = max_tasks_per_worker
        self._max_memory_mb = max_memory_mb
        self._health_blob = _ship("health_check", health_check)
        self._init_blob = _ship("initializer", initializer)
        self._timeouts = timeouts or PoolTimeouts()
        self._preload = tuple(preload)

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
        self._planned = INF  # when the supervisor will wake next
        self._held_until = INF
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Closed when the pool is collected, never earlier: a late _wake() from a lane
        # thread must not write into a reused descriptor.
        weakref.finalize(self, close_fds, self._wake_r, self._wake_w).atexit = False
        self._wake_armed = False
        self._supervisor: threading.Thread | None = None
        self._zygote = None

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
                An exception in it is logged and the message dropped.

        Both callbacks run on the lane thread of the worker that runs the task:
        one task's messages are handled one at a time, in order, but callbacks of
        tasks on different workers run concurrently (guard shared state). Time in
        ``on_call`` counts toward the task's timeout; a task that times out while
        ``on_call`` runs fails once ``on_call`` has returned.

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
        task = Task(next(self._ids), blob, future, None if limit == INF else limit, on_call, on_send)
        with self._lock:
            self._check_open()
            if self._state is PoolState.CREATED:
                self._start()
            worker = self._idle.pop() if self._idle else None
            if worker is not None and not self._assign(worker, task):
                self._idle.append(worker)
                return future  # cancelled already (not possible yet, but cheap to honour)
            if worker is None and not self._pending:  # with tasks waiting, no worker takes one ahead
                worker = self._send_ahead(task)
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
                "queued": sum(not t.future.cancelled() for t in self._pending)
                + sum(len(w.ahead) for w in self._workers),
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
            if not task.future.cancel():  # sent ahead to a worker that died: it counts as running
                fail(task, PoolClosed(f"task {task.id} was stopped: the pool was shut down before it ran"))
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

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._broken is not None:
            raise RestartStorm(str(self._broken))
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            raise PoolClosed("the WorkerPool is shut down and takes no more tasks; create a new WorkerPool")

    def _start(self) -> None:
        """Under the lock: CREATED -> RUNNING, start the supervisor (which spawns the workers)."""
        self._state = PoolState.RUNNING
        self._supervisor = threading.Thread(target=self._supervise, name="studyhall-pool-supervisor", daemon=True)
        self._supervisor.start()
        live_pools.add(self)

    def _abort(self) -> None:
        """Cancel queued tasks and kill running ones (their futures fail with PoolClosed)."""
        with self._lock:
            self._abort_running = True
        self._wake()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bounds(min_workers: int, max_workers: int) -> None:
    if not (_is_int(min_workers) and _is_int(max_workers)) or not 0 <= min_workers <= max_workers or max_workers < 1:
        raise InvalidRequest(
            f"need ints with 0 <= min_workers <= max_workers and max_workers >= 1, got min_workers={min_workers!r}, "
            f"max_workers={max_workers!r}"
        )


def _check_positive(
    name: str, value: object, *, integer: bool = False, finite: bool = False, optional: bool = True
) -> None:
    """Refuse anything but a positive number (an int with ``integer``; ``math.inf`` unless ``finite``)."""
    if value is None and optional:
        return
    if integer:
        ok = _is_int(value) and value > 0  # type: ignore[operator]
        kind = "a positive int"
    else:
        # bool is an int to Python, but True seconds or megabytes is a mistake, not a setting.
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value > 0
            and not (finite and math.isinf(value))
        )
        kind = "a positive finite number" if finite else "a positive number"
    if not ok:
        none = " (or None for no limit)" if optional else ""
        raise InvalidRequest(f"{name} must be {kind}{none}, got {value!r}")


@atexit.register
def _stop_live_pools() -> None:
    """Pools still running at interpreter exit: stop their workers rather than leave
    them to notice the closed socket one by one."""
    for pool in list(live_pools):
        try:
            pool._abort()
            pool.shutdown(wait=False, cancel_pending=True)
            if pool._supervisor is not None:
                pool._supervisor.join(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _ship(what: str, fn: Callable[[], Any] | str | None) -> bytes | None:
    """``fn`` pickled for the workers (checked first), or None."""
    if fn is None:
        return None
    try:
        check_target(fn)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc}") from None
    try:
        return cloudpickle.dumps(fn)  # type: ignore[no-any-return]
    except Exception as exc:
        raise InvalidRequest(
            f"{what} {fn!r} cannot be pickled for the workers ({type(exc).__name__}: {exc}); "
            "pass a module-level function or a 'module:function' string"
        ) from exc


__all__ = ["MAX_PREFETCH", "WorkerPool"]
