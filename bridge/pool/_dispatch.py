"""Task dispatch for ``WorkerPool``: handing tasks to workers, and what each lane reads.

A lane thread (one per worker, see ``_workers.py``) calls ``_on_message``
for every message, in the order the worker sent it: channel calls and sends go to
the task's callbacks, DONE resolves the future after giving the worker its next
task, READY and PONG make a worker available.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from studyhall.bridge.pool import _worker
from studyhall.bridge.pool._core import CAPACITY, PoolCore, PoolState
from studyhall.bridge.pool._tasks import Task, answer_call, deliver_send, settle
from studyhall.bridge.pool._workers import WorkerProcess, WorkerState

logger = logging.getLogger("studyhall.bridge.pool")


class TaskDispatch(PoolCore):
    """Hands tasks to free workers; the lanes' message handlers."""

    def _assign(self, worker: WorkerProcess, task: Task) -> bool:
        """Under the lock: make ``task`` the worker's current task, unless it was cancelled."""
        if not self._set_running(task):
            return False
        self._begin(worker, task, time.monotonic())
        return True

    def _begin(self, worker: WorkerProcess, task: Task, start: float) -> None:
        task.started = start
        task.deadline = None if task.timeout is None else start + task.timeout
        worker.state = WorkerState.BUSY
        worker.task = task

    def _capacity(self) -> int:
        """Under the lock: workers that are or will be able to take work (not stopping)."""
        return sum(w.state in CAPACITY for w in self._workers)

    def _sending_ahead(self) -> bool:
        """Under the lock: whether the pool sends tasks ahead at all right now (once per decision)."""
        return (
            self._prefetch > 0
            and self._state is PoolState.RUNNING
            # below max_workers a new worker takes it sooner; above it (after resize()) the
            # workers must run dry to be stopped
            and self._capacity() == self._max
        )

    def _may_send_ahead(self, worker: WorkerProcess) -> bool:
        """Under the lock, when sending ahead: whether ``worker`` may take one more task after its current one."""
        return (
            worker.state is WorkerState.BUSY
            and worker.task is not None
            and len(worker.ahead) < self._prefetch
            and (self._max_tasks is None or worker.tasks_done + len(worker.ahead) + 2 <= self._max_tasks)
        )

    def _send_ahead(self, task: Task) -> WorkerProcess | None:
        """Under the lock, with prefetch: the busy worker ``task`` is sent ahead to, if one may take it."""
        if not self._sending_ahead():
            return None
        busy = [w for w in self._workers if self._may_send_ahead(w)]
        if not busy or not self._set_running(task):
            return None
        # the worker with the least ahead of it, and of those the one whose task started first
        worker = min(busy, key=lambda w: (len(w.ahead), w.task.started or 0.0))  # type: ignore[union-attr]
        worker.ahead.append(task)
        return worker

    def _take_ahead(self, worker: WorkerProcess) -> list[Task]:
        """Under the lock, with prefetch: the oldest waiting tasks, sent ahead to ``worker``."""
        taken: list[Task] = []
        if not self._pending or not self._sending_ahead():
            return taken
        while self._pending and self._may_send_ahead(worker):
            task = self._pending.popleft()
            if self._set_running(task):
                worker.ahead.append(task)
                taken.append(task)
        return taken

    @staticmethod
    def _set_running(task: Task) -> bool:
        """Mark the future running, unless it was cancelled; a task sent ahead to a worker that died is already."""
        if not task.running:
            if not task.future.set_running_or_notify_cancel():
                return False
            task.running = True
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
        self._send_tasks(worker, [task])

    def _send_tasks(self, worker: WorkerProcess, tasks: list[Task]) -> None:
        # Wake the supervisor only when a deadline is sooner than it plans to look.
        if any(t.deadline is not None and t.deadline < self._planned for t in tasks):
            self._wake()
        worker.send_tasks([(_worker.TASK, t.id, t.blob) for t in tasks])

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
            worker.task_pid = int(message[1])
            self._on_ready(worker)
        elif kind == _worker.PONG:
            self._on_pong(worker, message)
        elif kind == _worker.INIT_FAILED:
            self._on_init_failed(worker, str(message[1]))

    def _on_done(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        # A worker that grew past max_memory_mb gets no more work. Its own RSS is
        # cheap to read after every task; the health checks also count its children.
        rss = worker.own_memory_mb() if self._max_memory_mb is not None else 0.0
        now = time.monotonic()
        stop = wake = False
        following: list[Task] = []
        with self._lock:
            task = worker.task
            if task is None or task.id != message[1]:
                return
            worker.task = None
            worker.tasks_done += 1
            self._counts["completed" if message[2] == _worker.OK else "failed"] += 1
            if worker.ahead:
                # The worker went straight on to the task sent ahead: it starts now.
                started = worker.ahead.popleft()
                self._begin(worker, started, now)
                wake = started.deadline is not None and started.deadline < self._planned
            elif worker.state is WorkerState.BUSY:
                if self._max_memory_mb is not None and rss > self._max_memory_mb:
                    reason = f"uses {rss:.0f} MiB, over max_memory_mb={self._max_memory_mb:g}"
                    stop = self._retire(worker, reason, now, replace=True)
                elif self._max_tasks is not None and worker.tasks_done >= self._max_tasks:
                    stop = self._retire(worker, "recycled after max_tasks_per_worker tasks", now, replace=True)
                elif self._capacity() > self._max:  # (workers already stopping do not count)
                    stop = self._retire(worker, "above max_workers after resize()", now, scale_down=True)
                else:
                    nxt = self._free(worker, now)
                    following = [] if nxt is None else [nxt]
            if not stop and worker.task is not None:
                following += self._take_ahead(worker)
        if stop:
            worker.send((_worker.STOP,))
            self._wake()
        elif following:
            self._send_tasks(worker, following)
        elif self._state is not PoolState.RUNNING:
            self._wake()  # closing: the supervisor stops idle workers
        if wake:
            self._wake()  # the supervisor watches the deadline of the task that just started
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

    def _on_init_failed(self, worker: WorkerProcess, error: str) -> None:
        now = time.monotonic()
        with self._lock:
            if worker.state is not WorkerState.STARTING:
                return
            worker.start_error = error
            fails = self._start_failure(worker, now)  # counted here, with its reason, not when reaped
            self._retire(worker, f"its initializer raised {error}", now, replace=True)
        worker.send((_worker.STOP,))
        self._wake()
        self._fail_all(fails)

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
