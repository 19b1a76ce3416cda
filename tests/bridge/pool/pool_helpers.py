"""Tasks for the WorkerPool tests, importable in workers as ``"pool_helpers:name"``.

pytest puts this directory on sys.path and pool workers inherit the parent's
sys.path, so these run in workers by reference. Also ``wait_until`` for the tests.
Tasks reach the channel through the public ``studyhall.bridge.worker_channel``: a
worker has imported ``studyhall.bridge`` already (it starts with that import).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_HOGGED: list[bytearray] = []
SICK = False


def wait_until(pred: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """tests._util.wait_until with the pool tests' longer deadline and finer polling."""
    from tests._util import wait_until as wait  # imported here: workers load this module too

    return wait(pred, timeout=timeout, interval=0.01, what=what)


def worker_channel() -> Any:
    from studyhall.bridge import worker_channel as current

    return current()


def public_channel_call(payload: Any) -> Any:
    from studyhall.bridge import worker_channel as public

    return public().call(payload)  # type: ignore[union-attr]


def loaded() -> tuple[list[str], bool, str]:
    """In a worker: the heavy modules loaded, whether ``studyhall.bridge.worker_channel``
    finds this task's channel, and the module that runs the worker."""
    from studyhall.bridge import worker_channel as public

    heavy = sorted(m for m in ("sqlalchemy", "optuna", "numpy", "httpx", "tenacity", "asyncio") if m in sys.modules)
    return heavy, public() is not None, public.__module__


def double(x: int) -> int:
    return 2 * x


def pid() -> int:
    return os.getpid()


def where() -> tuple[str, list[str], int, int]:
    return os.getcwd(), list(sys.path), os.getpgid(0), os.getpid()


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def sleep_forever() -> None:
    while True:
        time.sleep(1000)


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def gate() -> int:
    """Block until the submitter's on_call answers (the test holds the answer back)."""
    worker_channel().call("gate")  # type: ignore[union-attr]
    return os.getpid()


INITIALIZED: list[int] = []  # pids of the processes where ``initialize`` ran


def initialize() -> None:
    """A pool initializer: takes its time (as heavy imports do) and leaves a mark."""
    time.sleep(float(os.environ.get("STUDYHALL_TEST_INIT_S", "0")))
    INITIALIZED.append(os.getpid())


def initialized() -> list[int]:
    return list(INITIALIZED)


def broken_initializer() -> None:
    raise ValueError("OPENAI_API_KEY is not set")


def gate_then_exit(code: int) -> None:
    """Block until the submitter's on_call answers, then end the worker process."""
    worker_channel().call("gate")  # type: ignore[union-attr]
    os._exit(code)


def start_sleeper_then_hang() -> None:
    """Start a grandchild (``sleep 1000``), tell the submitter its pid, hang."""
    child = subprocess.Popen(["sleep", "1000"])
    worker_channel().send(child.pid)  # type: ignore[union-attr]
    sleep_forever()


def start_escapees() -> list[int]:
    """Start two grandchildren that leave the worker's process group: ``sleep 300`` in a
    session of its own, and a daemon (``setsid sleep 300`` backgrounded by a shell that
    exits at once, so its parent is gone). Tell the submitter their pids; return them."""
    own = subprocess.Popen(["sleep", "300"], start_new_session=True)
    shell = subprocess.run(
        ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pids = [own.pid, int(shell.stdout.strip())]
    worker_channel().send(pids)  # type: ignore[union-attr]
    return pids


def start_escapees_then_hang() -> None:
    start_escapees()
    sleep_forever()


def start_escapees_deaf_to_sigterm() -> None:
    """The same, in a worker that ignores SIGTERM: only the SIGKILL after the grace ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    start_escapees()
    sleep_forever()


def start_escapees_then_exit() -> None:
    start_escapees()
    os._exit(3)


def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    _HOGGED.append(block)
    return os.getpid()


_CHILDREN: list[subprocess.Popen[bytes]] = []

HOG_CHILD = """
import sys, time
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
block[::4096] = b"x" * len(block[::4096])
print("ready", flush=True)
time.sleep(1000)
"""


def start_memory_hog_child(megabytes: int) -> tuple[int, int]:
    """Leave a child process holding ``megabytes`` resident; the worker itself stays small."""
    child = subprocess.Popen([sys.executable, "-c", HOG_CHILD, str(megabytes)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()  # its memory is resident now
    _CHILDREN.append(child)
    return os.getpid(), child.pid


def make_sick() -> int:
    global SICK
    SICK = True
    return os.getpid()


def health() -> bool:
    return not SICK


def health_or_raise() -> bool:
    if SICK:
        raise RuntimeError("feeling sick")
    return True


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles fine, but cannot be rebuilt from its args: unpickling fails in the parent."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_unpicklable() -> None:
    raise Unpicklable("holds a lock")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs("a", "b")


def return_unpicklable() -> Any:
    return threading.Lock()


def chatter(n: int) -> int:
    ch = worker_channel()
    assert ch is not None
    for i in range(n):
        ch.send(i)
    return n


def chatter_blobs(n: int, size: int) -> int:
    ch = worker_channel()
    for i in range(n):
        ch.send(bytes([i]) * size)
    return n


def chatter_then_die(n: int) -> None:
    ch = worker_channel()
    assert ch is not None
    for i in range(n):
        ch.send(i)
    os.kill(os.getpid(), signal.SIGKILL)


def concurrent_calls(threads: int, calls: int) -> list[list[int]]:
    """Many threads call at once; each must get its own replies back."""
    ch = worker_channel()
    assert ch is not None
    results: list[list[int]] = [[] for _ in range(threads)]

    def run(t: int) -> None:
        for i in range(calls):
            results[t].append(ch.call(t * 1000 + i))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def call_and_catch(payload: Any) -> tuple[str, str]:
    ch = worker_channel()
    assert ch is not None
    try:
        return "ok", repr(ch.call(payload))
    except Exception as exc:  # noqa: BLE001 - the test looks at what arrived
        return type(exc).__name__, str(exc)


def loaded_of(*names: str) -> list[str]:
    """In a worker: which of ``names`` are imported already."""
    return [n for n in names if n in sys.modules]


def environment(name: str) -> tuple[str | None, str]:
    """In a worker: the environment variable ``name`` and the working directory."""
    return os.environ.get(name), os.getcwd()


def say(text: str) -> None:
    """Write ``text`` to the worker's standard output, below any Python buffering."""
    os.write(1, text.encode())
