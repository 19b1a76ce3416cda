"""Worker management for ``WorkerPool``: the supervisor thread.

It sleeps in ``wait(pidfds + wake pipe, timeout=the next deadline)``, so a task's
timeout is acted on when it falls due, not at the next poll. Each wake-up is one
``_step``: reap what exited, decide everything under the lock (``_plan``: deadlines,
shrinking, health checks, how many to spawn), then act outside it (``_act``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from studyhall.bridge._errors import PoolClosed, RestartStorm
from studyhall.bridge.pool import _worker, _zygote
from studyhall.bridge.pool._core import CAPACITY, INF, Actions, Fail, PoolCore, PoolState, live_pools
from studyhall.bridge.pool._tasks import fail
from studyhall.bridge.pool._workers import STUDYHALL_ROOT, WorkerProcess, WorkerState

logger = logging.getLogger("studyhall.bridge.pool")

# Workers booting at once, at most. Each is a fresh interpreter (about 80 ms of CPU to
# boot and load its initializer); sixteen booting together on two cores are all ready
# only when the last one is, while a few at a time the first take tasks within tens of
# milliseconds (optimize(workers=16), a 2.5 s call: 76-77% of ideal -> 79-83%). One still
# starting after STAGGER_S (an initializer waiting on I/O) no longer holds the next back.
STARTING_AT_ONCE = max(2, os.cpu_count() or 1)
STAGGER_S = 0.2


class Supervisor(PoolCore):
    """Starts, watches, checks, stops and replaces worker processes."""

    #: A restart storm is this many fresh workers in a row dying before READY ...
    storm_limit = 5
    #: ... within this many seconds.
    storm_window = 60.0

    if TYPE_CHECKING:
        # The lane callbacks each new worker gets; TaskDispatch defines them, and
        # WorkerPool mixes both in.
        def _on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None: ...
        def _on_lane_closed(self, worker: WorkerProcess) -> None: ...

    def _supervise(self) -> None:
        try:
            while self._step():
                pass
        except BaseException:  # noqa: BLE001 - a bug here must not leave workers or futures behind
            logger.exception("pool supervisor failed; stopping every worker")
            self._emergency_stop("the pool's supervisor failed (see the log); create a new WorkerPool")
        finally:
            if self._zygote:
                self._zygote.close()

    def _step(self) -> bool:
        with self._lock:
            if self._state is PoolState.CLOSED:
                return False
            now = time.monotonic()
            sentinels = {w.sentinel: w for w in self._workers}
            self._planned = self._next_deadline(now)
        timeout = None if self._planned == INF else max(0.0, self._planned - now)
        ready = wait([self._wake_r, *sentinels], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        # Disarm after draining and before planning: a wake-up that found the flag
        # still set changed its state before this line, so the plan below sees it;
        # one after this line writes a byte that the next wait() sees.
        self._wake_armed = False
        exited = [sentinels[s] for s in ready if isinstance(s, int) and s in sentinels]
        for worker in exited:
            worker.reap()
        actions = Actions()
        with self._lock:
            now = time.monotonic()
            for worker in exited:
                actions.fails.extend(self._on_exit(worker, now))
            self._plan(now, actions)
        self._act(actions)
        return True

    def _on_exit(self, worker: WorkerProcess, now: float) -> list[Fail]:
        """Under the lock: a worker process is gone; account for it and owe a replacement if due."""
        previous = worker.state
        worker.state = WorkerState.EXITED
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        running = self._state is PoolState.RUNNING and self._broken is None
        fails: list[Fail] = []
        if worker.ready_at is None and not worker.start_error:  # (an initializer's failure counted already)
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

    def _start_failure(self, worker: WorkerProcess | None, now: float, what: str = "") -> list[Fail]:
        """Under the lock: a fresh worker died before READY; too many in a row is a restart storm."""
        if worker is not None:
            worker.replace = True
            what = (
                f"the last one (pid {worker.pid}) had its initializer raise {worker.start_error}"
                if worker.start_error
                else f"the last one (pid {worker.pid}) {worker.describe_exit()}"
            )
        self._last_start_failure = what
        failures = self._start_failures
        failures.append(now)
        while failures and failures[0] < now - self.storm_window:
            failures.popleft()
        if len(failures) >= self.storm_limit and self._broken is None:
            return self._break(len(failures))
        return []

    def _break(self, count: int) -> list[Fail]:
        """Under the lock: stop respawning; the queued tasks are returned to be failed."""
        self._broken = RestartStorm(
            f"{count} fresh workers in a row died before they could take a task "
            f"(within {self.storm_window:g}s; {self._last_start_failure}). Something ends the worker "
            "interpreter at start-up: read the workers' stderr above and check PYTHONHOME, PYTHONPATH, "
            "sitecustomize, the initializer and the health_check callable (unpickled at start). The pool stopped "
            "respawning; fix the cause and create a new WorkerPool"
        )
        logger.error("pool: %s", self._broken)
        self._owed = 0
        if self._state is PoolState.RUNNING:
            self._state = PoolState.CLOSING
        victims: list[Fail] = [(task, RestartStorm(str(self._broken)), None) for task in self._pending]
        self._pending.clear()
        return victims

    def _plan(self, now: float, actions: Actions) -> None:
        """Under the lock: everything the supervisor does on a wake-up, decided in one place."""
        self._check_deadlines(now, actions)
        self._shrink(now, actions)
        self._schedule_health(now, actions)
        actions.spawns = self._spawns_needed(now)
        if (
            self._state is PoolState.CLOSING
            and not self._workers
            and not self._draining
            and not self._pending
            and actions.spawns == 0
        ):
            self._state = PoolState.CLOSED
            live_pools.discard(self)

    def _check_deadlines(self, now: float, actions: Actions) -> None:
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

    def _shrink(self, now: float, actions: Actions) -> None:
        closing = self._state is not PoolState.RUNNING
        if closing and not self._pending:
            floor = 0
        elif closing:
            return
        else:
            floor = self._min
        capacity = sum(w.state in CAPACITY for w in self._workers)
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

    def _schedule_health(self, now: float, actions: Actions) -> None:
        if self._health_interval is None or self._state is not PoolState.RUNNING:
            return
        for worker in list(self._idle):
            if worker.last_health + self._health_interval <= now:
                self._idle.remove(worker)
                worker.state = WorkerState.CHECKING
                worker.ping_seq += 1
                worker.deadline = now + self._timeouts.health_check
                actions.checks.append(worker)

    def _spawns_needed(self, now: float) -> int:
        self._held_until = INF
        if self._broken is not None or self._state not in (PoolState.RUNNING, PoolState.CLOSING):
            return 0
        running = self._state is PoolState.RUNNING
        capacity = sum(w.state in CAPACITY for w in self._workers)
        busy = sum(w.state is WorkerState.BUSY for w in self._workers)
        target = min(self._max, max(self._min if running else 0, busy + len(self._pending)))
        owed = self._owed if running else 0
        needed = max(0, min(max(target - capacity, owed), self._max - len(self._workers)))
        booting = [
            w.started_at for w in self._workers if w.state is WorkerState.STARTING and now - w.started_at < STAGGER_S
        ]
        allowed = max(0, STARTING_AT_ONCE - len(booting))
        if needed > allowed:  # the rest when one is READY (that wakes us) or STAGGER_S has passed
            self._held_until = min(booting, default=now) + STAGGER_S
        return min(needed, allowed)

    def _next_deadline(self, now: float) -> float:
        """Under the lock: the soonest moment something needs the supervisor."""
        soonest = self._held_until
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

    def _act(self, actions: Actions) -> None:
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
                    worker,
                    f"uses {rss:.0f} MiB, over max_memory_mb={self._max_memory_mb:g}",
                    time.monotonic(),
                    replace=True,
                )
            seq = worker.ping_seq
        if over:
            logger.warning(
                "pool: worker %d uses %.0f MiB (max_memory_mb=%g); replacing it", worker.pid, rss, self._max_memory_mb
            )
            worker.send((_worker.STOP,))
        else:
            worker.send((_worker.PING, seq))

    def _spawn(self) -> None:
        now = time.monotonic()
        try:
            worker = self._start_worker(now)
        except OSError as exc:
            logger.error("pool: could not start a worker process: %s", exc)
            with self._lock:
                fails = self._start_failure(None, now, f"starting one failed with {type(exc).__name__}: {exc}")
                # No process exited to wake the supervisor: it tries again after a stagger.
                self._held_until = min(self._held_until, now + STAGGER_S)
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

    def _start_worker(self, now: float) -> WorkerProcess:
        """A new worker, forked by the zygote (started first if need be) or, without one, booted."""
        start = functools.partial(
            WorkerProcess,
            list(sys.path),
            self._health_blob,
            self._init_blob,
            self._on_message,
            self._on_lane_closed,
            now,
        )
        if not _zygote.SUPPORTED or self._zygote is False:
            return start()
        if self._zygote is None or not self._zygote.usable():
            self._zygote = _zygote.Zygote(STUDYHALL_ROOT, list(sys.path), self._preload)
        zygote = self._zygote
        try:
            return start(zygote)
        except _zygote.ZygoteGone as exc:
            # One that never forked is not tried again (a preload that crashes it, a broken
            # interpreter): the workers boot, and die at start-up where the fault is theirs too.
            if not zygote.forked:
                self._zygote = False
            logger.warning(
                "pool: %s; this worker%s boots as a fresh interpreter",
                exc,
                "" if zygote.forked else " and every later one",
            )
            return start()

    def _kill(self, worker: WorkerProcess, reason: str, now: float, actions: Actions, *, replace: bool = True) -> None:
        """Under the lock: SIGTERM the worker's group now, SIGKILL after the grace."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = WorkerState.KILLING
        worker.stop_reason = reason
        worker.replace = replace
        worker.deadline = now + self._timeouts.kill_grace
        actions.signals.append((worker, signal.SIGTERM))

    def _emergency_stop(self, reason: str) -> None:
        """The supervisor cannot go on: kill every worker group and fail every future."""
        with self._lock:
            self._state = PoolState.CLOSED
            workers = list(self._workers) + list(self._draining)
            tasks = list(self._pending) + [t for w in workers for t in (w.task, *w.ahead) if t is not None]
            self._pending.clear()
            live_pools.discard(self)
        for worker in workers:
            worker.signal_group(signal.SIGKILL)
        for task in tasks:
            fail(task, PoolClosed(reason))
