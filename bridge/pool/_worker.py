"""The worker side of ``WorkerPool``: one subprocess, one task at a time.

A worker is started by the pool as ``python -P -c WORKER_BOOT <root> <fd> <parent pid>``
in a session (and so a process group) of its own. On Linux that process forks at
once and becomes the worker's *keeper* (``_keep``): a child subreaper that does
nothing but wait, so that whatever a task starts stays below it even after leaving
the process group or losing its parent, and that kills all of it when the worker
exits, however it exits. The worker proper is the keeper's child. It talks to the
pool over one Unix socket, with length-prefixed pickled tuples::

    pool -> worker   CONFIG(sys_path, health_check, initializer, secrets)  TASK(id, blob)  SECRETS({id: secret})
                     REPLY(call, ok, blob)  PING(seq)  STOP
    worker -> pool   READY(pid)  DONE(id, status, ...)  CALL(id, call, blob)  SEND(id, blob)
                     PONG(seq, ok, reason)  INIT_FAILED(reason), then it exits

The main thread reads the socket and runs tasks and health checks. Only a task
that uses ``Channel.call`` needs someone reading while it runs: its first call
starts the *reader* thread, which from then on takes everything off the socket
(tasks and pings go to the main thread's inbox, replies wake the caller waiting
for them). Plain tasks thus pay no thread hand-off. End-of-file on the socket, or
SIGHUP (PR_SET_PDEATHSIG), means the pool's process is gone: the worker exits and
its keeper kills everything below it and its process group, itself included.

``WORKER_BOOT`` imports this module the ordinary way, never runs it as
``__main__``: it is then the very module ``studyhall.bridge.worker_channel`` names,
so a task sees the channel the worker set. That import is cheap because
``studyhall``, ``studyhall.bridge`` and ``studyhall.bridge.pool`` load their names
lazily (only the exceptions at once), and this module imports only the standard
library (cloudpickle when a task needs it): a replacement worker is ready in a few
tens of ms.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import pickle
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from studyhall.bridge.pool import _secrets

# Message kinds. Short strings: they are pickled with every message.
CONFIG, TASK, REPLY, PING, STOP, SECRETS = "config", "task", "reply", "ping", "stop", "secrets"
READY, DONE, CALL, SEND, PONG, INIT_FAILED = "ready", "done", "call", "send", "pong", "init_failed"
INIT_FAILED_EXIT = 3  # the exit code of a worker whose initializer raised
# DONE statuses.
OK, RAISED, UNPICKLABLE = "ok", "raised", "unpicklable"

PROTOCOL = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!Q")

# What the pool runs: ``python -P -c WORKER_BOOT ROOT FD PARENT_PID``. ROOT is the
# directory the pool's own ``studyhall`` was imported from, appended (not prepended:
# it must shadow nothing) so that a worker finds studyhall even where only the
# pool's process had it on sys.path.
WORKER_BOOT = (
    "import sys\nsys.path.append(sys.argv[1])\nfrom studyhall.bridge.pool import _worker\n_worker.main(sys.argv[2:])\n"
)


class Wire:
    """Pickled messages over a stream socket, each framed by an 8-byte length.

    ``send`` is thread-safe; ``recv`` belongs to one reader at a time. Reads are
    buffered, so a burst of small messages costs one system call (and, in a busy
    parent, one wait for the GIL) rather than two per message.
    """

    _CHUNK = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._pos = 0
        self._lock = threading.Lock()

    def send(self, *messages: tuple[Any, ...]) -> None:
        frames: list[bytes] = []
        for message in messages:
            data = pickle.dumps(message, protocol=PROTOCOL)
            frames += (_HEADER.pack(len(data)), data)
        with self._lock:
            if sum(len(f) for f in frames) < self._CHUNK:
                self.sock.sendall(b"".join(frames))
            else:
                for frame in frames:
                    self.sock.sendall(frame)

    def recv(self) -> tuple[Any, ...]:
        """The next message; EOFError when the other side is gone."""
        buf, head = self._buf, _HEADER.size
        while True:
            pos = self._pos
            if len(buf) - pos >= head:
                (size,) = _HEADER.unpack_from(buf, pos)
                end = pos + head + size
                if end <= len(buf):  # a whole buffered message: unpickled in place
                    with memoryview(buf) as view:
                        message = pickle.loads(view[pos + head : end])
                    if end == len(buf):
                        buf.clear()
                        self._pos = 0
                    else:
                        self._pos = end
                    return message  # type: ignore[no-any-return]
                if head + size >= self._CHUNK:  # a large one: read into a buffer of its own
                    self._pos = pos + head
                    return pickle.loads(self._take(size))  # type: ignore[no-any-return]
            if pos:
                del buf[:pos]
                self._pos = 0
            chunk = self.sock.recv(self._CHUNK)
            if not chunk:
                raise EOFError("the other end of the socket is closed")
            buf += chunk

    def close(self) -> None:
        with self._lock:  # not while another thread is writing
            self.sock.close()

    def _take(self, n: int) -> bytes | bytearray | memoryview:
        buf, pos = self._buf, self._pos
        if pos and len(buf) - pos < n:
            # About to read more: drop what was consumed, or a steady stream of
            # messages that never ends on a chunk boundary would grow the buffer forever.
            del buf[:pos]
            pos = self._pos = 0
        while len(buf) - pos < n and n - (len(buf) - pos) < self._CHUNK:
            chunk = self.sock.recv(self._CHUNK)
            if not chunk:
                raise EOFError("the other end of the socket is closed")
            buf += chunk
        if len(buf) - pos >= n:
            self._pos = pos + n
            piece = bytes(buf[pos : pos + n])
            if self._pos == len(buf):
                buf.clear()
                self._pos = 0
            return piece
        # A large message: read it straight into a buffer of its own size.
        out = bytearray(n)
        have = len(buf) - pos
        out[:have] = buf[pos:]
        buf.clear()
        self._pos = 0
        view = memoryview(out)
        while have < n:
            got = self.sock.recv_into(view[have:])
            if not got:
                raise EOFError("the other end of the socket is closed")
            have += got
        return out


class Channel:
    """The link from a running pool task to its submitter: ``call`` waits for a reply, ``send`` does not.

    Get it with ``bridge.worker_channel()`` inside a task. Both methods are
    thread-safe; payloads and replies travel pickled with cloudpickle.
    """

    def call(self, payload: Any) -> Any:
        """Send ``payload`` to the submitter's ``on_call`` and return its reply (or raise its exception)."""
        raise NotImplementedError

    def send(self, payload: Any) -> None:
        """Deliver ``payload`` to the submitter's ``on_send``, in order, without waiting."""
        raise NotImplementedError


# The channel of the task running in this worker process. A plain global rather
# than a contextvar: threads started by the task must see it too.
_current: Channel | None = None
# run_inline() (in the parent process) sets this one instead, so that concurrent
# inline tasks on different threads of one process each see their own channel.
_inline: contextvars.ContextVar[Channel | None] = contextvars.ContextVar("studyhall_inline_channel", default=None)


def worker_channel() -> Channel | None:
    """The channel of the pool task running here, or None outside a pool task."""
    return _inline.get() or _current


def resolve(target: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the function part may be dotted)."""
    import importlib

    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target!r} names a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


class _Reply:
    __slots__ = ("event", "ok", "blob")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.blob = b""


class _WorkerChannel(Channel):
    def __init__(self, worker: _Worker, task_id: int) -> None:
        self._worker = worker
        self._task_id = task_id
        self.ended = False  # set (under the worker's reader lock) when the task returns

    def call(self, payload: Any) -> Any:
        import cloudpickle

        worker = self._worker
        worker.start_reader(self)
        call_id = next(worker.call_ids)
        reply = _Reply()
        worker.calls[call_id] = reply
        try:
            worker.send((CALL, self._task_id, call_id, cloudpickle.dumps(payload, protocol=PROTOCOL)))
            reply.event.wait()
        finally:
            worker.calls.pop(call_id, None)
        value = pickle.loads(reply.blob)
        if reply.ok:
            return value
        raise value

    def send(self, payload: Any) -> None:
        import cloudpickle

        self._worker.send((SEND, self._task_id, cloudpickle.dumps(payload, protocol=PROTOCOL)))


class _Worker:
    def __init__(self, wire: Wire, health_check: Callable[[], Any] | None) -> None:
        self.wire = wire
        self.send = wire.send
        self.health_check = health_check
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.calls: dict[int, _Reply] = {}
        self.call_ids = itertools.count()
        self._reader: threading.Thread | None = None
        self._reader_lock = threading.Lock()

    def start_reader(self, channel: _WorkerChannel) -> None:
        """Hand the reading of the socket to a thread of its own, for good (see the module doc)."""
        with self._reader_lock:
            if channel.ended:
                # The main thread may be reading the socket again: a second reader
                # would tear messages apart.
                raise RuntimeError(
                    "Channel.call() after its task returned (from a thread the task left running); "
                    "call only while the task runs, or join the thread before returning"
                )
            if self._reader is None:
                # Safe: the main thread is inside the task, not reading, and
                # will look at the inbox from now on.
                self._reader = threading.Thread(target=self._read_forever, name="studyhall-worker-reader", daemon=True)
                self._reader.start()

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self.wire.recv()
        except (EOFError, OSError):
            # The pool closed our socket or died: take whatever a task started along.
            _kill_own_group()
            raise

    def _read_forever(self) -> None:
        while True:
            message = self._receive()
            if message[0] == REPLY:
                reply = self.calls.get(message[1])
                if reply is not None:
                    reply.ok, reply.blob = message[2], message[3]
                    reply.event.set()
            else:
                self.inbox.put(message)

    def serve(self) -> None:
        """The main thread: run tasks and health checks until told to stop."""
        self.send((READY, os.getpid()))
        while True:
            message = self.inbox.get() if self._reader is not None else self._receive()
            kind = message[0]
            if kind == TASK:
                self.run_task(message[1], message[2])
            elif kind == SECRETS:  # new secrets of the pool's process, sent before the task that may need them
                _secrets.receive(message[1])
            elif kind == PING:
                self.send((PONG, message[1], *self.check_health()))
            elif kind == STOP:
                return

    def run_task(self, task_id: int, blob: bytes) -> None:
        global _current
        _current = channel = _WorkerChannel(self, task_id)
        try:
            fn, args, kwargs = pickle.loads(blob)
            if isinstance(fn, str):
                fn = resolve(fn)
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the submitter
            message = _raised(task_id, exc)
        else:
            message = _returned(task_id, result)
        finally:
            _current = None
            with self._reader_lock:
                channel.ended = True
        _flush_stdio()
        self.send(message)

    def check_health(self) -> tuple[bool, str]:
        if self.health_check is None:
            return True, ""
        try:
            answer = self.health_check()
        except BaseException as exc:  # noqa: BLE001
            return False, "health_check raised " + _format(exc, only=True)
        if not answer:
            return False, f"health_check returned {answer!r}"
        return True, ""


def _format(exc: BaseException, *, only: bool = False) -> str:
    """The exception's traceback as text (or with ``only``, its last line)."""
    # Imported on the first failure: traceback (with linecache and tokenize) is a
    # tenth of this module's import time, and most workers never need it.
    import traceback

    if only:
        return "".join(traceback.format_exception_only(exc)).strip()
    return "".join(traceback.format_exception(exc))


def _type_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dumps(obj: object) -> bytes:
    # Plain pickle is several times faster for plain data; cloudpickle handles
    # the rest (lambdas, closures, classes made in the submitter's __main__).
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001 - pickle raises many kinds; cloudpickle gets a second try
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=PROTOCOL)  # type: ignore[no-any-return]


def _returned(task_id: int, result: object) -> tuple[Any, ...]:
    try:
        return (DONE, task_id, OK, _dumps(result))
    except Exception as exc:  # noqa: BLE001
        return (DONE, task_id, UNPICKLABLE, _type_name(result), f"{type(exc).__name__}: {exc}")


def _raised(task_id: int, exc: BaseException) -> tuple[Any, ...]:
    text = _format(exc)
    try:
        blob: bytes | None = _dumps(exc)
    except Exception:  # noqa: BLE001 - the pool reports the type and message instead
        blob = None
    return (DONE, task_id, RAISED, blob, text, _type_name(exc), str(exc))


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not kill the worker
            pass


def _kill_own_group() -> None:
    _flush_stdio()
    # Only when we lead our own group: never signal the group we were started in.
    if os.getpgid(0) == os.getpid():
        _kill_descendants(os.getpid())  # the keeper: those that left the group too
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc; zombies left out), parents before children."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 2 or fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _kill_descendants(root: int) -> None:
    """SIGKILL every process below ``root`` (this process) and reap those that end up its children."""
    for _ in range(100):  # a fork bomb is not stopped here, but neither is it waited for forever
        pids = descendants(root)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reaped = False
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
        if not pids and not reaped:
            return
        if not reaped:
            time.sleep(0.005)  # killed ones still exiting


def _keep(fd: int) -> None:
    """Split into the keeper (this process, the pool's child) and the worker (its child, returned to).

    The keeper is a child subreaper: whatever a task starts stays below it even when it
    leaves the process group (``start_new_session=True``) or its parent exits (a
    daemon's double fork). When the worker exits, however it ends (a timeout's signal,
    ``os._exit``, a crash), the keeper SIGKILLs everything still below it and exits as
    the worker did (same code or signal). On other systems, or if the kernel refuses,
    there is no keeper and the worker is this process, as before.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return
    keeper = os.getpid()
    try:
        worker = os.fork()
    except OSError:  # out of processes: serve without a keeper rather than not at all
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        return
    if worker == 0:
        # The worker. Nothing to clean up if its keeper dies: the keeper, or the pool, does.
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != keeper:
            os._exit(1)
        return
    os.close(fd)  # the worker's socket: the pool must see EOF when the worker goes
    # The pool's SIGTERM (a timeout) is for the worker; the keeper outlives it to clean up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == worker:
            break
    _kill_descendants(keeper)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the worker's signal, so that the pool reports it
        try:
            signal.signal(-code, signal.SIG_DFL)  # (SIGKILL's cannot be set, nor needs to be)
        except (OSError, ValueError):
            pass
        os.kill(keeper, -code)
        code = 128 - code
    os._exit(code)


def _on_parent_death(signum: int, frame: object) -> None:
    _kill_own_group()


def _guard_parent(parent_pid: int) -> None:
    """Die with the pool's process, even when it was SIGKILLed (belt and braces to the socket EOF)."""
    # No SIGINT handling needed: in a session of our own, the terminal's Ctrl-C
    # reaches the parent only, which then stops us.
    signal.signal(signal.SIGHUP, _on_parent_death)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        _kill_own_group()


def _initialize(wire: Wire, blob: bytes) -> None:
    """Run the pool's initializer before taking work; if it raises, say why and exit."""
    try:
        init = pickle.loads(blob)
        (resolve(init) if isinstance(init, str) else init)()
    except BaseException as exc:  # noqa: BLE001 - whatever it is, this worker cannot serve
        sys.stderr.write("studyhall worker: the pool's initializer raised:\n" + _format(exc))
        _flush_stdio()
        wire.send((INIT_FAILED, f"{type(exc).__name__}: {exc}"[:500]))
        try:  # exit once the pool has read why (it answers with STOP)
            while wire.recv()[0] != STOP:
                pass
        except (EOFError, OSError):
            pass
        os._exit(INIT_FAILED_EXIT)


def main(argv: list[str]) -> None:
    """Entry point of a worker process (see ``WORKER_BOOT``)."""
    fd, parent_pid = int(argv[0]), int(argv[1])
    _guard_parent(parent_pid)
    os.set_inheritable(fd, False)  # what the task starts must not hold our socket open
    _keep(fd)  # from here on, the worker is the keeper's child (on Linux)
    wire = Wire(socket.socket(fileno=fd))
    kind, sys_path, health_blob, init_blob, sent = wire.recv()
    assert kind == CONFIG, kind
    _secrets.receive(sent)  # before the initializer unpickles whatever needs them
    sys.path[:] = sys_path
    health_check = pickle.loads(health_blob) if health_blob is not None else None
    if isinstance(health_check, str):
        health_check = resolve(health_check)
    if init_blob is not None:
        _initialize(wire, init_blob)
    worker = _Worker(wire, health_check)
    try:
        worker.serve()
    finally:
        _flush_stdio()
    # os._exit: threads a task left behind must not keep a stopped worker alive.
    os._exit(0)
