"""connect(url) -> Storage: one SQLAlchemy engine shared by Optuna and studyhall.

::

    connect(url) ──> Storage ──┬── .engine    one pool of connections
                               ├── .optuna    optuna RDBStorage on that engine
                               ├── .session() studyhall's tables, retried
                               └── .heartbeat one daemon thread a process

SQLite runs in WAL mode with a busy timeout, and every transaction begins
IMMEDIATE so that a reader never has to upgrade to a writer (the case where
SQLite answers "database is locked" at once, whatever the timeout). Transient
errors on any backend (locks, deadlocks, serialization failures, dropped
connections) are retried with a bounded exponential backoff (tenacity).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
import tenacity
from sqlalchemy import event
from sqlalchemy.engine import make_url

from studyhall.storage._errors import InvalidRequest, StorageError, TransientStorageError
from studyhall.storage._heartbeat import Heartbeat

_log = logging.getLogger("studyhall.storage")

if TYPE_CHECKING:
    import optuna

T = TypeVar("T")

DEFAULT_URL = "sqlite:///studyhall.db"
ENV_VAR = "STUDYHALL_STORAGE"
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "mysql+pymysql", "mariadb+pymysql")

# Substrings and codes that mark an error worth retrying, by backend.
_TRANSIENT_TEXT = (
    "database is locked",
    "database table is locked",
    "deadlock",
    "could not serialize",
    "lock wait timeout",
    "server closed the connection",
    "connection reset",
    "lost connection",
    "gone away",
    "connection refused",
    "terminating connection",
)
_TRANSIENT_SQLSTATE = {"40001", "40P01", "57P01", "08006", "08003", "08001"}
_TRANSIENT_MYSQL = {1205, 1213, 2003, 2006, 2013}


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or anything in its cause chain) is a retryable database error."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        orig = getattr(exc, "orig", None)
        if orig is not None:
            if getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATE:
                return True
            args = getattr(orig, "args", ())
            if args and isinstance(args[0], int) and args[0] in _TRANSIENT_MYSQL:
                return True
        if isinstance(exc, (sa.exc.OperationalError, sqlite3.OperationalError)) or type(
            exc
        ).__name__ in ("StorageInternalError", "OperationalError"):
            text = str(exc).lower()
            if any(t in text for t in _TRANSIENT_TEXT):
                return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _is_setup_race(exc: BaseException | None) -> bool:
    # Processes creating the schema at the same moment: the loser's CREATE TABLE/TYPE
    # hits "already exists" or a duplicate key in the catalog; trying again sees the
    # winner's tables and creates nothing.
    seen = 0
    while exc is not None and seen < 8:
        text = str(exc).lower()
        if any(t in text for t in ("already exists", "duplicate key", "duplicate entry", "unique constraint failed")):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def retrying(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 8,
    retry_on: Callable[[BaseException], bool] = is_transient,
    **kwargs: Any,
) -> T:
    """Call ``fn`` and retry it on transient database errors with jittered backoff."""
    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=0.02, max=2.0),
        reraise=True,
    )
    try:
        return retryer(fn, *args, **kwargs)
    except Exception as exc:
        if is_transient(exc):
            raise TransientStorageError(
                f"the database stayed busy or unreachable through {attempts} attempts "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check that the "
                "server is up and not overloaded, then retry"
            ) from exc
        raise


def _setup_retry(exc: BaseException) -> bool:
    return is_transient(exc) or _is_setup_race(exc)


def _normalise_url(url: str) -> sa.URL:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidRequest(
            f"cannot parse storage URL {url!r}; expected e.g. sqlite:///studyhall.db, "
            "postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
        ) from exc
    scheme = parsed.drivername
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidRequest(
            f"unsupported storage URL scheme {scheme!r}; use one of "
            "sqlite:///path.db, postgresql+psycopg://..., mysql+pymysql://..."
        )
    if scheme == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if scheme == "mariadb+pymysql":
        parsed = parsed.set(drivername="mysql+pymysql")
    if parsed.drivername == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise InvalidRequest(
            "in-memory SQLite cannot be shared with worker processes; give a file, "
            "e.g. sqlite:///studyhall.db"
        )
    return parsed


def _prepare_sqlite_file(path: str) -> None:
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


_checkpointer = _Checkpointer()


def _sqlite_hooks(engine: sa.Engine) -> None:
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Storage:
    """A studyhall database: the engine, Optuna's storage on it, and studyhall's tables.

    Create one with :func:`connect`. Picklable: it travels as its URL and
    reconnects on the other side.
    """

    def __init__(
        self, url: str, *, heartbeat_interval: int = 1, grace_period: int = 10
    ) -> None:
        import optuna

        parsed = _normalise_url(url)
        self.url = parsed.render_as_string(hide_password=False)
        self.dialect = parsed.get_backend_name()
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        engine_kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            assert parsed.database is not None
            _prepare_sqlite_file(parsed.database)
            engine_kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            engine_kwargs.update(pool_recycle=1800)
        with warnings.catch_warnings():
            # heartbeat_interval is marked experimental in Optuna; we rely on it knowingly.
            warnings.simplefilter("ignore")
            self.optuna: optuna.storages.RDBStorage = retrying(
                optuna.storages.RDBStorage,
                self.url,
                retry_on=_setup_retry,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
        self.engine: sa.Engine = self.optuna.engine
        if self.dialect == "sqlite":
            _sqlite_hooks(self.engine)
            self.engine.dispose()  # connections opened before the hooks must not be reused
        retrying(self._migrate, retry_on=_setup_retry)
        self.heartbeat = Heartbeat(self)
        if self.dialect == "sqlite":
            assert parsed.database is not None
            _checkpointer.add(self.engine, parsed.database)

    def _migrate(self) -> None:
        from studyhall.storage._migrate import upgrade

        upgrade(self.engine)

    def __repr__(self) -> str:
        return f"Storage({make_url(self.url).render_as_string(hide_password=True)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (connect, (self.url,), None)

    @contextlib.contextmanager
    def session(self) -> Iterator[sa.Connection]:
        """A transaction on studyhall's tables: commit on success, roll back on error.

        Errors are translated into :class:`StorageError`; wrap the whole unit of work
        in :meth:`run` to have transient ones retried.
        """
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise
            raise StorageError(
                f"the database rejected a studyhall write ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]})"
            ) from exc

    def run(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction, retrying the whole of it on transient errors."""

        def attempt() -> T:
            with self.session() as conn:
                return fn(conn)

        return retrying(attempt)

    def now(self) -> float:
        """The database server's clock in epoch seconds (one clock for every host)."""

        from studyhall.storage._sql import db_clock_sql

        q = db_clock_sql(self.dialect)

        def read(conn: sa.Connection) -> float:
            return float(conn.exec_driver_sql(q).scalar_one())

        return self.run(read)

    def study_id(self, name: str) -> int | None:
        """The Optuna study id of ``name``, or None when there is no such study."""
        import optuna

        try:
            return retrying(self.optuna.get_study_id_from_name, name)
        except KeyError:
            return None
        except optuna.exceptions.StorageInternalError as exc:  # pragma: no cover
            raise StorageError(str(exc)) from exc

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials of ``study_id`` whose process stopped heartbeating.

        Optuna only looks at trials with a heartbeat row; a process that died
        between ``ask`` and its first heartbeat would leave a trial RUNNING
        forever, so a RUNNING trial without a row counts as stale after a minute.
        """
        from optuna.storages._rdb import models

        def query(conn: sa.Connection) -> list[int]:
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            now = now.replace(tzinfo=None)
            t, hb = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
            rows = conn.execute(
                sa.select(t.c.trial_id, t.c.datetime_start, hb.c.heartbeat)
                .select_from(t.outerjoin(hb, hb.c.trial_id == t.c.trial_id))
                .where(t.c.study_id == study_id, t.c.state == "RUNNING")
            ).all()
            stale = []
            local_now = _local_now()
            for trial_id, started, beat in rows:
                if beat is not None:
                    if (now - beat).total_seconds() > self.grace_period:
                        stale.append(trial_id)
                elif started is not None and (local_now - started).total_seconds() > max(
                    60, 6 * self.grace_period
                ):
                    stale.append(trial_id)
            return stale

        return self.run(query)

    def close(self) -> None:
        """Stop the heartbeat thread and close every pooled connection."""
        self.heartbeat.stop()
        _checkpointer.discard(self.engine)
        _uncache(self)
        self.engine.dispose()


def _local_now() -> Any:
    import datetime

    # Optuna writes datetime_start with the writing host's local clock.
    return datetime.datetime.now()


_cache: dict[tuple[str, int, int], Storage] = {}
_cache_lock = threading.Lock()
_cache_pid = os.getpid()


def connect(
    url: str | Storage | None = None, *, heartbeat_interval: int = 1, grace_period: int = 10
) -> Storage:
    """Open (or reuse, within this process) the studyhall storage at ``url``.

    Args:
        url: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``,
            ``mysql+pymysql://...``) or a Storage; default ``$STUDYHALL_STORAGE``,
            else ``sqlite:///studyhall.db``.
        heartbeat_interval: seconds between heartbeats of the trials this process runs.
        grace_period: seconds without a heartbeat after which a RUNNING trial is stale.

    Raises:
        InvalidRequest: the URL is malformed or its scheme is not supported.

    Example:
        >>> st = connect("sqlite:///studyhall.db")  # doctest: +SKIP
    """
    global _cache_pid
    if isinstance(url, Storage):
        return url
    if heartbeat_interval < 1 or heartbeat_interval > grace_period:
        raise InvalidRequest(
            f"heartbeat_interval={heartbeat_interval} must be >= 1 and at most "
            f"grace_period={grace_period}"
        )
    raw = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    key = (_normalise_url(raw).render_as_string(hide_password=False), heartbeat_interval, grace_period)
    with _cache_lock:
        if _cache_pid != os.getpid():  # a forked child must not share its parent's sockets
            _cache.clear()
            _cache_pid = os.getpid()
        st = _cache.get(key)
        if st is None:
            st = Storage(key[0], heartbeat_interval=heartbeat_interval, grace_period=grace_period)
            _cache[key] = st
        return st


def _uncache(st: Storage) -> None:
    with _cache_lock:
        for k, v in list(_cache.items()):
            if v is st:
                del _cache[k]
