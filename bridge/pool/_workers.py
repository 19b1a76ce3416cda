"""Worker management for ``bridge.WorkerPool``: one ``WorkerProcess`` per subprocess.

A ``WorkerProcess`` is forked by the pool's zygote (on Linux, ``_zygote.py``) or
started as ``python -P -c WORKER_BOOT``, in a new session either way (so it leads
its own process group; on Linux it is the worker's keeper, see ``_worker._keep``),
owns the parent's end of the worker's socket, a pidfd that becomes readable when
the process exits, and the *lane* thread that reads the socket in order and hands
every message to the pool. It knows how to signal its whole process group (a
SIGKILL also reaches what left the group) and how much memory it uses; the pool
decides when.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import studyhall
from studyhall.bridge.pool import _secrets, _worker
from studyhall.bridge.pool._zygote import Forked, Zygote, start_interpreter

if TYPE_CHECKING:
    from studyhall.bridge.pool._tasks import Task

logger = logging.getLogger("studyhall.bridge.pool")

# Where this process imported studyhall from; the workers fall back to it (see WORKER_BOOT).
STUDYHALL_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(studyhall.__file__)))
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class WorkerState(enum.Enum):
    """Where a worker is in its life, as the pool sees it."""

    STARTING = "starting"  # started, has not said READY yet
    IDLE = "idle"  # ready for a task
    CHECKING = "checking"  # idle, answering a health-check ping; gets no work meanwhile
    BUSY = "busy"  # running a task
    STOPPING = "stopping"  # told to exit (shrink, recycle, unhealthy, closing)
    KILLING = "killing"  # SIGTERMed (timeout, unresponsive); SIGKILL follows after the grace
    EXITED = "exited"  # the process is gone (reaped)


class WorkerProcess:
    """One worker subprocess: its socket, its pidfd, its lane thread, and the pool's notes on it."""

    def __init__(
        self,
        sys_path: list[str],
        health_blob: bytes | None,
        init_blob: bytes | None,
        on_message: Callable[[WorkerProcess, tuple[Any, ...]], None],
        on_lane_closed: Callable[[WorkerProcess], None],
        now: float,
        zygote: Zygote | None = None,
    ) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process: Booted | Forked = zygote.fork(theirs.fileno()) if zygote is not None else Booted(theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.process.pid
        self.wire = _worker.Wire(ours)
        self.sentinel = self.process.sentinel
        self._on_message = on_message
        self._on_lane_closed = on_lane_closed
        self._reaped = False
        # The pool's notes, changed only under the pool's lock.
        self.state = WorkerState.STARTING
        self.task: Task | None = None
        self.ahead: deque[Task] = deque()  # sent with prefetch, to run in turn when ``task`` is done
        self.tasks_done = 0
        self.started_at = now
        self.ready_at: float | None = None
        self.idle_since = now
        self.last_health = now
        self.ping_seq = 0
        self.deadline: float | None = None  # of the current phase: start, ping, stop or kill
        self.stop_reason = ""
        self.replace = False  # start a replacement when this one is gone
        self.returncode: int | None = None
        self.eof = False
        self.handling = False  # the lane is inside on_call/on_send (not waiting on the socket)
        self.drain_deadline: float | None = None
        self.start_error = ""  # what its initializer raised, if it did
        self.task_pid = 0  # the process that runs tasks (READY says): the keeper's child, on Linux
        # The secrets of this process (API keys of the clients a task may carry) go over
        # this socket, in memory, never in a pickle that is stored (see _secrets.py).
        self._secrets_lock = threading.Lock()
        self._secrets_gen, sent = _secrets.snapshot()
        self.send((_worker.CONFIG, sys_path, health_blob, init_blob, sent))
        self.lane = threading.Thread(target=self._read, name=f"studyhall-pool-lane-{self.pid}", daemon=True)

    def start_lane(self) -> None:
        """Start reading the worker's messages (once the pool has registered it)."""
        self.lane.start()

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} {self.state.value}>"

    def send(self, *messages: tuple[Any, ...]) -> bool:
        """Send messages (several in one write); False if the worker is already gone (handled elsewhere)."""
        try:
            self.wire.send(*messages)
        except OSError:
            return False
        return True

    def send_tasks(self, tasks: list[tuple[Any, ...]]) -> None:
        """Send TASK messages, preceded by the secrets registered since the worker was last sent them."""
        # A task's secrets were registered before it was pickled; the generation is
        # recorded only once they are written, so an equal one means they went ahead.
        if _secrets.generation() == self._secrets_gen:  # the common case: nothing new, no lock
            self.send(*tasks)
            return
        with self._secrets_lock:
            gen, sent = _secrets.snapshot()
            if gen == self._secrets_gen:
                self.send(*tasks)
            else:
                self.send((_worker.SECRETS, sent), *tasks)
                self._secrets_gen = gen

    def _read(self) -> None:
        # Messages are handled in the order the worker sent them, on this thread:
        # a slow on_call or on_send holds up this worker only.
        try:
            while True:
                try:
                    message = self.wire.recv()
                except (EOFError, OSError):
                    break
                self.handling = True
                try:
                    self._on_message(self, message)
                except Exception:  # noqa: BLE001 - keep draining; one bad message must not lose the rest
                    logger.exception("pool: handling a message from worker %d failed", self.pid)
                finally:
                    self.handling = False
        finally:
            self.wire.close()
            self._on_lane_closed(self)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's whole process group (no-op once it is reaped); a SIGKILL
        also reaches every process below it that left the group."""
        if self._reaped:
            return
        # Listed before the kill: once the keeper (the subreaper, see _worker._keep) is dead,
        # what it kept goes to init and out of reach.
        escaped = _worker.descendants(self.pid) if sig == signal.SIGKILL else []
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in escaped:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self) -> int | None:
        """Kill what is left of the group (a task's children), then collect the exit status (None: lost)."""
        if not self._reaped:
            # Before waitpid: until the leader is reaped its pid (= the group id) cannot be reused.
            self.signal_group(signal.SIGKILL)
            self.returncode = self.process.wait()
            self._reaped = True
            os.close(self.sentinel)
        return self.returncode

    def memory_mb(self) -> float:
        """Resident memory of the worker and every process it started, in MiB."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            total: int = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return 0.0
        return total / (1024 * 1024)

    def own_memory_mb(self) -> float:
        """Resident memory of the worker process alone, in MiB (one small /proc read on Linux)."""
        try:
            with open(f"/proc/{self.task_pid or self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE / (1024 * 1024)
        except (OSError, ValueError, IndexError):
            return self.memory_mb()

    def describe_exit(self) -> str:
        """How the process ended, in words that hint at the cause."""
        code = self.returncode
        if code is None:
            return "exited, its status lost with the pool's zygote" if self._reaped else "is still running"
        if code >= 0:
            return f"exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (the out-of-memory killer, or someone ran kill -9)",
            "SIGSEGV": " (a crash in native code)",
            "SIGABRT": " (an abort in native code)",
        }.get(name, "")
        return f"was killed by {name}{hint}"


class Booted:
    """A worker started as a fresh interpreter (where there is no zygote): ``python -P -c WORKER_BOOT``."""

    def __init__(self, theirs: socket.socket) -> None:
        self.proc = start_interpreter(_worker.WORKER_BOOT, STUDYHALL_ROOT, theirs.fileno())
        self.pid = self.proc.pid
        self.sentinel = _sentinel(self.proc)

    def wait(self) -> int:
        """Wait for the exit and collect its status."""
        return self.proc.wait()


def _thread_sentinel(proc: subprocess.Popen[bytes]) -> int:
    """Where pidfd_open is missing: a thread waits for the exit and closes a pipe's write end."""
    r, w = os.pipe()

    def wait() -> None:
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        finally:
            os.close(w)

    threading.Thread(target=wait, daemon=True).start()
    return r


def _sentinel(proc: subprocess.Popen[bytes]) -> int:
    """A descriptor that becomes readable when ``proc`` exits (the supervisor waits on it)."""
    if hasattr(os, "pidfd_open") and sys.platform.startswith("linux"):
        try:
            return os.pidfd_open(proc.pid)
        except OSError:
            pass
    return _thread_sentinel(proc)
