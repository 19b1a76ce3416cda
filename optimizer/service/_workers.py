"""``studyhall serve --workers N``: N service processes answering on one listening socket.

One process answers ask and tell under one GIL, with the HTTP parsing, FastAPI and
the database work taking turns on it; N processes share the load (issue 12)::

    supervisor (the `studyhall serve` process): opens the storage once (migrations),
     │  binds the socket, spawns N workers (fresh interpreters: no inherited threads or engines)
     ├─> worker i: its own Storage, app and uvicorn server on the shared socket
     │     │  (the kernel hands each new connection to one of them)
     │     └─ watches the supervisor: gone, even SIGKILLed ─> shuts down like on SIGTERM
     └─ waits on the workers' sentinels and on SIGINT/SIGTERM:
          a worker died serving, or was killed by a signal ─> logged with its exit code or signal, replaced
          a worker exited with an error before serving ─> every worker stopped, exit 1 (it would fail again)
          SIGINT/SIGTERM ─> SIGTERM to each worker, GRACE_S for their answers in flight, then SIGKILL

Everything a worker knows that matters across workers lives in the database: studies
(a worker's name cache re-validates against it, ``_routes.Studies``), leases, and the
keys of told trials. SQLite writers of all workers take turns through a lock file
(``storage/_sqlite.py``). Each worker's ``/metrics`` are its own process's series
(see docs/service.md).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn

from studyhall.optimizer.service._server import ConnectionCensus, HttpImpl, Server, config
from studyhall.storage import Storage

_log = logging.getLogger("studyhall.service")

GRACE_S = 10.0  # for a worker's answers in flight after SIGTERM, before SIGKILL
_spawn = multiprocessing.get_context("spawn")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What each worker builds its app and server from (pickled to it)."""

    storage: Storage
    token: str | None
    body_timeout: float
    allowed_hosts: Sequence[str] | None
    log_level: str
    header_timeout: float
    max_connections: int
    http: HttpImpl


def _worker(
    settings: WorkerSettings,
    sock: socket.socket,
    ready: multiprocessing.connection.Connection,
    census: ConnectionCensus,
) -> None:
    """A worker's life: its app on the shared socket until SIGTERM/SIGINT or the supervisor's death."""
    import optuna

    from studyhall.optimizer.service._app import create_app

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    app = create_app(
        settings.storage, settings.token, body_timeout=settings.body_timeout, allowed_hosts=settings.allowed_hosts
    )
    server = _Server(
        config(
            app,
            log_level=settings.log_level,
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections,
            http=settings.http,
            census=census,
        ),
        ready,
    )
    parent = multiprocessing.parent_process()
    if parent is not None:

        def orphaned() -> None:
            # The sentinel becomes readable when the supervisor is gone, however it died.
            multiprocessing.connection.wait([parent.sentinel])
            server.should_exit = True

        threading.Thread(target=orphaned, name="studyhall-supervisor-watch", daemon=True).start()
    server.run(sockets=[sock])


class _Server(Server):
    """uvicorn's server, telling the supervisor once it is serving."""

    def __init__(self, config: uvicorn.Config, ready: multiprocessing.connection.Connection) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then say so."""
        await super().startup(sockets)
        if not self.should_exit:
            self._ready.send(True)
            self._ready.close()


@dataclasses.dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    said_ready: multiprocessing.connection.Connection  # a pipe, not an Event: nothing for a SIGKILL to leak
    ready: bool = False

    def waits(self) -> list[Any]:
        """What to wake the supervisor for: the worker's end, and its word that it serves."""
        return [self.process.sentinel] if self.ready else [self.process.sentinel, self.said_ready]

    def check(self) -> None:
        """Note whether the worker said it serves."""
        if not self.ready:
            try:
                self.ready = self.said_ready.poll() and bool(self.said_ready.recv())
            except (EOFError, OSError):  # it died before saying so
                pass


def run_workers(settings: WorkerSettings, host: str, port: int, workers: int) -> int:
    """Serve with ``workers`` processes on ``host:port`` until SIGINT/SIGTERM; the exit status."""
    sock = uvicorn.Config(lambda: None, host=host, port=port, log_level=settings.log_level).bind_socket()
    # The self-pipe wakes the wait below on a signal (a handler alone would wait out the timeout).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        try:
            os.write(wake_w, b"x")
        except OSError:
            pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[_Child] = []
    counts = _spawn.RawArray("l", workers)  # open connections per worker: the cap is on their sum
    status = 0
    try:
        children = [_start(settings, sock, ConnectionCensus(counts, i)) for i in range(workers)]
        while not stop.is_set():
            multiprocessing.connection.wait([wake_r, *(w for c in children for w in c.waits())], timeout=1.0)
            for i, child in enumerate(children):
                child.check()
                if child.process.exitcode is None or stop.is_set():
                    continue
                why = _exit_reason(child.process.exitcode)
                if not child.ready and child.process.exitcode > 0:  # its app or server failed: it would again
                    _log.error("service worker %s %s before it could serve; stopping", child.process.pid, why)
                    status = 1
                    stop.set()
                    break
                _log.warning("service worker %s %s; starting another", child.process.pid, why)
                counts[i] = 0  # its connections died with it
                children[i] = _start(settings, sock, ConnectionCensus(counts, i))
    finally:
        _stop(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
        sock.close()
    return status


def _start(settings: WorkerSettings, sock: socket.socket, census: ConnectionCensus) -> _Child:
    said_ready, ready = _spawn.Pipe(duplex=False)
    process = _spawn.Process(target=_worker, args=(settings, sock, ready, census), name="studyhall-serve-worker")
    process.start()
    ready.close()  # the worker's end: closed here, a worker that dies unready reads as EOF
    return _Child(process, said_ready)


def _stop(children: list[_Child]) -> None:
    """SIGTERM every worker, wait up to GRACE_S for all of them, then SIGKILL the rest."""
    for child in children:
        if child.process.exitcode is None:
            child.process.terminate()
    deadline = time.monotonic() + GRACE_S
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.process.exitcode is None:
            _log.warning("service worker %s did not stop within %g s; killing it", child.process.pid, GRACE_S)
            child.process.kill()
            child.process.join()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
