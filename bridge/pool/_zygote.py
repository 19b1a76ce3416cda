"""The pool's zygote: one warm interpreter that forks every worker, so a new worker costs a fork, not a boot.

A worker started as a fresh interpreter spends 60-90 ms of CPU before it can take a
task (the interpreter, site-packages, this package, cloudpickle). On two cores, the
eight workers of ``optimize(workers=8)`` booting that way cost about a sixth of a
2.5 s call. The zygote boots once per pool, imports what every worker needs, and
then forks on request; what it forks runs ``_worker.main`` exactly as a booted
worker does (its own session, its keeper, the same socket protocol)::

    pool (supervisor thread)                zygote (python -P -c ZYGOTE_BOOT, own session)
      FORK(env, cwd) + fds [socket, 1, 2]  ─> fork ─> child: setsid, stdio, env, cwd,
                                                      _worker.main (keeper + worker)
      <─ FORKED(pid) + fd [pidfd]              (no exec: imports already done)
      REAP(pid), once the pidfd is readable ─> waitpid ─> <─ REAPED(exit code)

Each fork carries what a freshly started process would have inherited at that moment
(the environment, the working directory, standard output and error), so a worker
forked late is started as if by ``subprocess`` then. The zygote reaps a worker only
when asked: until the pool has reaped it, its pid (the group id the pool signals)
cannot be reused. It exits when the pool closes its socket or dies (PR_SET_PDEATHSIG),
and its workers' keepers, told of that by their own PR_SET_PDEATHSIG, kill what is
below them; so a lost zygote takes its workers along, and the pool replaces them all
the way it replaces lost workers.

Linux only (pidfds, passing descriptors); elsewhere each worker boots as before.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from studyhall.bridge.pool import _worker

if TYPE_CHECKING:
    import subprocess

# subprocess and traceback are imported where used: the pool's process has them loaded
# already, and the zygote, whose boot every first worker waits for, never needs them.

SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")
ZYGOTE_BOOT = (
    "import sys\nsys.path.append(sys.argv[1])\nfrom studyhall.bridge.pool import _zygote\n_zygote.serve(sys.argv[2:])\n"
)
WARM, FORK, FORKED, FAILED, REAP, REAPED = "warm", "fork", "forked", "failed", "reap", "reaped"
REPLY_TIMEOUT_S = 30.0  # a fork or a reap of an exited process takes milliseconds; a stuck zygote is replaced
_MAX_MESSAGE = 1 << 20  # what a reply may be; a request is capped by the socket's send buffer (about 200 KiB)


class ZygoteGone(OSError):
    """The zygote died, hung or refused: the pool starts a fresh one for the next worker."""


class Forked:
    """A worker process forked by a zygote: its pid, a pidfd that is readable once it exits, and its reaping."""

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.sentinel = pidfd
        self._zygote = zygote

    def wait(self) -> int | None:
        """Wait for the exit and collect its status (None if the zygote died with it unreaped)."""
        from multiprocessing.connection import wait  # the pool's supervisor has it loaded; the zygote need not

        wait([self.sentinel])
        return self._zygote.reap(self.pid)


class Zygote:
    """The pool's side of one zygote process (thread-safe; see the module docstring)."""

    def __init__(self, root: str, sys_path: list[str], preload: Sequence[str] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = start_interpreter(ZYGOTE_BOOT, root, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        # No answer awaited: the first fork's waits for it (the socket keeps the order).
        socket.send_fds(ours, [pickle.dumps((WARM, sys_path, list(preload)))], [])
        self._sock = ours
        self._lock = threading.Lock()
        self.alive = True
        self.forked = 0  # workers it made

    def usable(self) -> bool:
        """Whether it can still fork (not closed, not lost, not dead)."""
        return self.alive and self.proc.poll() is None

    def fork(self, fd: int) -> Forked:
        """A new worker process on socket ``fd`` (ZygoteGone if the zygote cannot make one)."""
        stdio = [n for n in (1, 2) if _is_open(n)]
        try:
            cwd: str | None = os.getcwd()
        except OSError:  # deleted: the worker keeps the zygote's, as subprocess would fail to tell
            cwd = None
        request = (FORK, dict(os.environ), cwd, stdio)
        reply, fds = self._ask(request, [fd, *stdio], want_fds=1)
        if reply[0] == FORKED and len(fds) == 1:
            self.forked += 1
            return Forked(self, reply[1], fds[0])
        for extra in fds:
            os.close(extra)
        raise ZygoteGone(f"the pool's zygote could not fork a worker: {reply[1] if len(reply) > 1 else reply}")

    def reap(self, pid: int) -> int | None:
        """The exit code of exited worker ``pid`` (negative: the signal), collected by the zygote; None if unknown."""
        try:
            reply, _ = self._ask((REAP, pid), [], want_fds=0)
        except ZygoteGone:
            return None
        return reply[1] if reply[0] == REAPED else None

    def close(self) -> None:
        """Let the zygote go (it exits when its socket closes) and collect it."""
        import subprocess

        with self._lock:
            self.alive = False
            self._sock.close()
        try:
            self.proc.wait(timeout=REPLY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _ask(self, request: tuple[Any, ...], fds: list[int], want_fds: int) -> tuple[tuple[Any, ...], list[int]]:
        with self._lock:
            if not self.alive:
                raise ZygoteGone("the pool's zygote was closed")
            try:
                socket.send_fds(self._sock, [pickle.dumps(request)], fds)
                data, got, _flags, _addr = socket.recv_fds(self._sock, _MAX_MESSAGE, max(want_fds, 1))
            except TimeoutError as exc:  # stuck
                raise ZygoteGone(self._lose(f"did not answer within {REPLY_TIMEOUT_S:g}s", 0.0)) from exc
            except OSError as exc:  # dying (EPIPE, ECONNRESET)
                raise ZygoteGone(self._lose(f"stopped answering ({exc})", 1.0)) from exc
            if not data:
                raise ZygoteGone(self._lose("closed its socket", 1.0))
            return pickle.loads(data), list(got)

    def _lose(self, what: str, exiting_s: float) -> str:
        """Under the lock: stop using the zygote, given ``exiting_s`` to exit by itself (its status says why),
        then killed; why, in words. Its workers die with it and are replaced."""
        import subprocess

        self.alive = False
        self._sock.close()
        try:
            code: int | None = self.proc.wait(timeout=exiting_s) if exiting_s else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        else:  # it ended by itself: how says why (a broken interpreter: exit code 1)
            what = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        return f"the pool's zygote (pid {self.proc.pid}), which forks the workers, {what}"


def start_interpreter(boot: str, root: str, fd: int) -> subprocess.Popen[bytes]:
    """``python -P -c boot root fd <this pid>``: a fresh interpreter holding socket ``fd``, in a session of its own
    (its own process group: the pool signals it and what it starts; the terminal's Ctrl-C is the pool's to handle)."""
    import subprocess

    # -P: "-c" would put the working directory first on sys.path, and a project's own
    # queue.py or socket.py would shadow what the process imports before it takes the
    # pool's sys.path.
    return subprocess.Popen(
        [sys.executable, "-P", "-c", boot, root, str(fd), str(os.getpid())],
        pass_fds=(fd,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# ---- the zygote process ------------------------------------------------------------------


def serve(argv: list[str]) -> None:
    """The zygote's life (see ``ZYGOTE_BOOT``): fork and reap workers on request until its socket closes."""
    fd, parent_pid = int(argv[0]), int(argv[1])
    _worker._guard_parent(parent_pid)  # dies with the pool's process
    # ... leaving each keeper to kill what is below it (its PR_SET_PDEATHSIG): a keeper
    # killed from here first would let what its worker started escape to init.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: os._exit(0))
    ctl = socket.socket(fileno=fd)
    warm = ctl.recv(_MAX_MESSAGE)
    if not warm:
        os._exit(0)  # the pool closed before the first worker
    _kind, sys_path, preload = pickle.loads(warm)
    sys.path[:] = sys_path
    # Loaded once here, for every worker: what tasks arrive pickled with, what the keeper
    # calls prctl with, and the pool's preload. One that fails to import fails in the
    # worker too, where the task's error says why.
    for module in ["cloudpickle", "ctypes", *preload]:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctl, _MAX_MESSAGE, 3)
        except OSError:
            break
        if not data:
            break  # the pool closed its end
        request = pickle.loads(data)
        if request[0] == FORK:
            reply, out = _fork(ctl, fds, *request[1:])
        else:
            reply, out = (REAPED, _reap(request[1])), []
        for n in fds:
            os.close(n)
        try:
            socket.send_fds(ctl, [pickle.dumps(reply)], out)
        except OSError:
            break
        finally:
            for n in out:
                os.close(n)
    os._exit(0)  # each worker's keeper, told by PR_SET_PDEATHSIG, kills what is below it


def _fork(
    ctl: socket.socket, fds: list[int], env: dict[str, str], cwd: str | None, stdio: list[int]
) -> tuple[tuple[Any, ...], list[int]]:
    """Fork a worker on socket ``fds[0]`` with stdio ``fds[1:]``; the reply and the pidfd to send back."""
    _worker._flush_stdio()
    try:
        pid = os.fork()
    except OSError as exc:
        return (FAILED, f"{type(exc).__name__}: {exc}"), []
    if pid == 0:
        try:
            ctl.close()
            os.setsid()  # as start_new_session=True: its own group, which the pool signals
            for target, source in zip(stdio, fds[1:], strict=True):
                os.dup2(source, target)
            os.environ.clear()
            os.environ.update(env)
            if cwd is not None:
                with contextlib.suppress(OSError):
                    os.chdir(cwd)
            sock = os.dup(fds[0])  # the others are closed below; this one is the worker's
            for n in fds:
                os.close(n)
            _worker.main([str(sock), str(os.getppid())])
        except BaseException:  # noqa: BLE001 - never back into the zygote's loop
            with contextlib.suppress(Exception):
                import traceback

                sys.stderr.write("studyhall worker: starting from the pool's zygote failed:\n" + traceback.format_exc())
                _worker._flush_stdio()
        os._exit(1)
    # Before anyone could reap it (only this process does, when asked): the pidfd is this very process.
    pidfd = os.pidfd_open(pid)
    return (FORKED, pid), [pidfd]


def _reap(pid: int) -> int | None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
