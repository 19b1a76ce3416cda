"""SQLite as a shared database: WAL, IMMEDIATE transactions, and checkpoints off the write path."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _Turns:
    """One writing transaction at a time per SQLite engine and process, handed over in order.

    Every writing transaction here is IMMEDIATE, so SQLite admits one at a time anyway; what
    it does with the others is sleep and poll (1, 2, 5, ... then 100 ms naps), so
    with a few threads writing a waiter sleeps long after the lock came free: the
    HTTP service's ``ask`` had a p99 of over half a second at 8 clients. Threads of one
    process wait on this lock instead and start the moment it is released. Other
    processes still meet SQLite's own lock; a thread that waits longer than the busy
    timeout goes ahead and lets SQLite time it out as before.
    """

    WAIT_S = 30.0  # the busy_timeout below

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakKeyDictionary[sa.Engine, tuple[int, threading.RLock]] = weakref.WeakKeyDictionary()

    def add(self, engine: sa.Engine) -> None:
        with self._guard:
            self._locks[engine] = (os.getpid(), threading.RLock())

    @contextlib.contextmanager
    def taken(self, engine: sa.Engine) -> Iterator[None]:
        """Hold ``engine``'s turn for the block (nothing for engines that are not SQLite's)."""
        entry = self._locks.get(engine)
        if entry is None:
            yield
            return
        pid, lock = entry
        if pid != os.getpid():  # a forked child: the parent's lock state means nothing here
            with self._guard:
                lock = threading.RLock()
                self._locks[engine] = (os.getpid(), lock)
        held = lock.acquire(timeout=self.WAIT_S)
        try:
            yield
        finally:
            if held:
                lock.release()


turns = _Turns()


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
