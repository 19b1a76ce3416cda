"""SQLite as a shared database: WAL, IMMEDIATE transactions, and checkpoints off the write path."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: write turns within a process only
    fcntl = None  # type: ignore[assignment]

import sqlalchemy as sa
from sqlalchemy import event

_log = logging.getLogger("studyhall.storage")


def prepare_file(path: str) -> None:
    # WAL is a property of the file: set it once, before any engine opens it.
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


_AUTOCHECKPOINT_PAGES = 10_000  # SQLite's default is 1,000


class _Checkpointer:
    """Copies SQLite write-ahead logs back into their files from one thread, every half second.

    With SQLite's automatic checkpoints, whichever commit crosses 1,000 log pages
    copies them all and syncs the file, so writes that dirty more pages (a tell
    with a distribution) pay for it more often. A PASSIVE checkpoint never waits
    for readers or writers. One thread serves every SQLite storage of the process,
    and only logs written since its last look.
    """

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[int, tuple[weakref.ref[sa.Engine], Path, int]] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, engine: sa.Engine, database: str) -> None:
        """Keep the log of ``engine``'s file short until the engine is closed or collected."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child starts its own thread
                self._engines.clear()
                self._thread, self._pid = None, os.getpid()
            self._engines[id(engine)] = (weakref.ref(engine), Path(database + "-wal"), 0)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="studyhall-wal-checkpoint", daemon=True)
                self._thread.start()

    def discard(self, engine: sa.Engine) -> None:
        """Stop looking after ``engine``'s log (the storage was closed)."""
        self._forget(id(engine))

    def _forget(self, key: int) -> None:
        with self._lock:
            self._engines.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL_S)  # a daemon's pace, not a synchronisation
            with self._lock:
                entries = list(self._engines.items())
            for key, (ref, wal, seen) in entries:
                engine = ref()
                if engine is None:
                    self._forget(key)
                    continue
                try:
                    written = wal.stat().st_mtime_ns
                    if written != seen:
                        raw = engine.raw_connection()
                        try:
                            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
                        finally:
                            raw.close()
                        with self._lock:
                            if key in self._engines:
                                self._engines[key] = (ref, wal, written)
                except Exception:  # no log yet, or a busy file: the next round looks again
                    _log.debug("WAL checkpoint of %s skipped", wal, exc_info=True)


checkpointer = _Checkpointer()


class _Turn:
    """One engine's writing turn in this process: a thread lock, then a lock file shared with other processes."""

    def __init__(self, path: str | None) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.path = path  # None: an in-memory database, or no fcntl (Windows): this process's threads only
        self.fd: int | None = None
        self.depth = 0  # nested turns of the thread holding ``lock`` (the file is locked once)


class WouldWait(Exception):
    """The first write turn inside :func:`unless_waiting` was not free: nothing was written; run the work elsewhere."""


class _Budget:
    """What :func:`unless_waiting` allows: a wait for the first write turn of up to ``wait_s``, none after it."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s: float | None = wait_s

    def first_turn(self) -> float | None:
        """The wait allowed if this is the block's first turn (it may then refuse), else None."""
        wait_s, self.wait_s = self.wait_s, None
        return wait_s


_unless_waiting: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "studyhall_unless_waiting", default=None
)


@contextlib.contextmanager
def unless_waiting(wait_s: float) -> Iterator[None]:
    """Within the block, WouldWait instead of a wait longer than ``wait_s`` for the first write turn.

    For work that had better run on an event loop than hop to a thread (the HTTP
    service's ask and tell on SQLite): it may block the loop for one turn's
    ``wait_s``, never for another writer's long transaction. Only the first turn may
    refuse, so work that gets WouldWait wrote nothing and can simply run again
    elsewhere; once a turn was taken, later ones wait as always. (SQLite's own lock,
    held by a program that does not use studyhall, is still waited for.)
    """
    token = _unless_waiting.set(_Budget(wait_s))
    try:
        yield
    finally:
        _unless_waiting.reset(token)


class _Turns:
    """One writing transaction at a time per SQLite database, handed over in order, across processes.

    Every writing transaction here is IMMEDIATE, so SQLite admits one at a time anyway; what
    it does with the others is sleep and poll (1, 2, 5, ... then 100 ms naps), so
    with a few writers a waiter sleeps long after the lock came free: the HTTP
    service's ``ask`` had a p99 of over half a second at 8 clients. Instead, threads of
    one process queue on a lock and start the moment it is released, and the one at the
    head then takes ``flock`` on a file beside the database (``<db>-turn``) shared by
    every studyhall process on it (``studyhall serve --workers N``, several workers on one
    study), polling it at sub-millisecond to 2 ms intervals rather than SQLite's up to
    100 ms. Programs that do not use studyhall still meet SQLite's own lock.

    The lock file, never the database: closing any descriptor of the database file
    would drop SQLite's own POSIX locks on it. A process that dies holding the turn
    releases it (the kernel drops a dead process's flock). A forked child opens the file
    anew: a descriptor inherited from its parent shares the parent's lock, so locking it
    would succeed while the parent writes. A writer that waits longer than the busy
    timeout goes ahead and lets SQLite time it out, as before.
    """

    WAIT_S = 30.0  # the busy_timeout below
    POLL_S = (0.0001, 0.002)  # first and longest pause between tries of the lock file

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._turns: weakref.WeakKeyDictionary[sa.Engine, _Turn] = weakref.WeakKeyDictionary()

    def add(self, engine: sa.Engine) -> None:
        """Give ``engine`` (a SQLite engine with its hooks installed) its turns."""
        database = engine.url.database
        shared = fcntl is not None and database not in (None, "", ":memory:") and "mode=memory" not in str(engine.url)
        with self._guard:
            self._turns[engine] = _Turn(f"{database}-turn" if shared else None)

    @contextlib.contextmanager
    def taken(self, engine: sa.Engine) -> Iterator[None]:
        """Hold ``engine``'s turn for the block (nothing for engines that are not SQLite's)."""
        turn = self._turns.get(engine)
        if turn is None:
            yield
            return
        if turn.pid != os.getpid():  # a forked child: the parent's lock state means nothing here
            with self._guard:
                turn = self._turns[engine] = _Turn(turn.path)
        budget = _unless_waiting.get()
        first_wait = budget.first_turn() if budget is not None else None
        refusable = first_wait is not None
        wait_s = self.WAIT_S if first_wait is None else first_wait
        if not turn.lock.acquire(timeout=wait_s):
            if refusable:
                raise WouldWait("another thread of this process is writing")
            yield  # let SQLite's busy timeout decide
            return
        try:
            filed = turn.depth > 0 or self._lock_file(turn, time.monotonic() + wait_s)
            if refusable and not filed and turn.path is not None:
                raise WouldWait("another process is writing")
            turn.depth += 1
            try:
                yield
            finally:
                turn.depth -= 1
                if filed and turn.depth == 0 and turn.fd is not None:
                    fcntl.flock(turn.fd, fcntl.LOCK_UN)
        finally:
            turn.lock.release()

    def _lock_file(self, turn: _Turn, deadline: float) -> bool:
        """Take the lock file (with ``turn.lock`` held); False if there is none or it stayed busy past ``deadline``."""
        if turn.path is None:
            return False
        if turn.fd is None:
            try:
                # O_CLOEXEC (os.open's default): a program this process runs does not get it.
                turn.fd = os.open(turn.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:  # a read-only directory: this process's threads still take turns
                _log.debug("no lock file for SQLite write turns at %s: %s", turn.path, exc)
                turn.path = None
                return False
        pause = self.POLL_S[0]
        while True:
            try:
                fcntl.flock(turn.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)  # flock has no timeout; waiting on it blocking could outlast WAIT_S
            pause = min(2 * pause, self.POLL_S[1])


turns = _Turns()


@contextlib.contextmanager
def begun(engine: sa.Engine, *, read: bool) -> Iterator[sa.Connection]:
    """A connection of ``engine`` in a transaction for the block: a writer's after its turn, a reader's at once.

    On SQLite a writer begins IMMEDIATE in its turn; a reader (``read``) begins a plain
    BEGIN and reads a WAL snapshot beside the writers, queueing behind nobody. Other
    databases ignore the difference.
    """
    with contextlib.nullcontext() if read else turns.taken(engine), engine.connect() as conn:
        if read:
            conn.execution_options(studyhall_read=True)
        with conn.begin():
            yield conn


def install_hooks(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that "begin" below is ours.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        # The WAL is copied back into the file by a thread of its own (_Checkpointer), so
        # that no write pays for it; this is only the backstop should that thread stall.
        cur.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A writer takes the lock at BEGIN (a deferred one could fail to upgrade its read
        # snapshot midway); a transaction marked read-only reads a WAL snapshot beside writers.
        read = conn.get_execution_options().get("studyhall_read", False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    turns.add(engine)
