"""connect(url) -> Storage: one SQLAlchemy engine shared by Optuna and studyhall.

::

    connect(url) ──> Storage ──┬── .engine    one pool of connections
                               ├── .optuna    SQLStorage: an Optuna storage on that engine
                               ├── .transaction(fn)  fn(conn) in one transaction, retried
                               ├── .session()        one transaction, not retried
                               └── .heartbeat one daemon thread a process

SQLite runs in WAL mode with a busy timeout, and every transaction begins
IMMEDIATE so that a reader never has to upgrade to a writer (the case where
SQLite answers "database is locked" at once, whatever the timeout). Transient
errors on any backend (locks, deadlocks, serialization failures, dropped
connections) are retried with a bounded exponential backoff (tenacity).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from studyhall.storage import _sqlite
from studyhall.storage._errors import InvalidRequest, StorageError, StudyhallError
from studyhall.storage._heartbeat import Heartbeat
from studyhall.storage._optuna import ensure_optuna_schema, table
from studyhall.storage._retry import invalidate_unusable, is_transient, retrying, setup_retry
from studyhall.storage._versions import schema_is_current
from studyhall.storage.rdb import SQLStorage

T = TypeVar("T")


class _DroppedConnectionReset(logging.Filter):
    """Drop SQLAlchemy's traceback for a rollback on a connection the server already closed.

    The pool rolls a connection back when it is returned; after a dropped connection
    (a restarted server, a killed session) that rollback fails, the pool discards the
    connection, and the next transaction is retried on a fresh one. Nothing is lost,
    so the ERROR with its traceback on stderr only alarms: keep it at debug level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.getMessage().startswith("Exception during reset") and is_transient(exc):
            _log.debug("discarded a pooled connection the server had closed (%s)", exc)
            return False
        return True


_log = logging.getLogger("studyhall.storage")
logging.getLogger("sqlalchemy.pool.impl.QueuePool").addFilter(_DroppedConnectionReset())

DEFAULT_URL = "sqlite:///studyhall.db"
ENV_VAR = "STUDYHALL_STORAGE"
HEARTBEAT_ENV = "STUDYHALL_HEARTBEAT_INTERVAL"  # connect()'s default heartbeat_interval (seconds)
GRACE_ENV = "STUDYHALL_GRACE_PERIOD"  # connect()'s default grace_period (seconds)
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "mysql+pymysql", "mariadb+pymysql")


def _open_error(where: str, parsed: sa.URL, exc: BaseException) -> StorageError:
    """What went wrong opening a storage, in one line that says what to do."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " | ".join(str(e) for e in chain).lower()
    detail = str(chain[-1]).splitlines()[0][:200] if chain else ""
    if "file is not a database" in text or "malformed" in text or "not a database" in text:
        return StorageError(
            f"{where}: the file is not a SQLite database, or it is damaged ({detail}); point at a studyhall "
            "database, or move the file away to start a new one"
        )
    if parsed.get_backend_name() == "sqlite" and (
        "unable to open database" in text or any(isinstance(e, OSError) for e in chain)
    ):
        return StorageError(
            f"{where}: cannot open {parsed.database!r} ({detail}); give the path of a file in a directory you can write"
        )
    if "can't locate revision" in text:
        return StorageError(
            f"{where} was written by a newer studyhall (a schema revision this version does not know: {detail}); "
            "upgrade studyhall (pip install -U studyhall)"
        )
    if "no longer compatible with the table schema" in text:
        return StorageError(f"{where}: {detail}")  # Optuna's message says what to run
    if ("does not exist" in text and "database" in text) or "unknown database" in text:
        return StorageError(
            f"{where}: the database {parsed.database!r} does not exist; create it (createdb / CREATE DATABASE) "
            "or fix the URL"
        )
    if (
        "password authentication failed" in text
        or "access denied" in text
        or ("role" in text and "does not exist" in text)
    ):
        return StorageError(f"{where} refused the connection ({detail}); check the user and password in the URL")
    return StorageError(f"{where}: cannot open the storage ({type(chain[-1]).__name__}: {detail})")


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
            "in-memory SQLite cannot be shared with worker processes; give a file, e.g. sqlite:///studyhall.db"
        )
    return parsed


class Storage:
    """A studyhall database: the engine, Optuna's storage on it, and studyhall's tables.

    Create one with :func:`connect`. Picklable: it travels as its URL and
    reconnects on the other side.
    """

    def __init__(self, url: str, *, heartbeat_interval: int = 1, grace_period: int = 10) -> None:
        parsed = _normalise_url(url)
        self.url = parsed.render_as_string(hide_password=False)
        self.dialect = parsed.get_backend_name()
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        try:
            self._open(parsed)
        except StudyhallError:
            raise
        except Exception as exc:  # whatever the driver, Optuna or alembic said: one line saying what to do
            raise _open_error(repr(self), parsed, exc) from exc

    def _open(self, parsed: sa.URL) -> None:
        engine_kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            assert parsed.database is not None
            _sqlite.prepare_file(parsed.database)
            engine_kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            engine_kwargs.update(pool_recycle=1800)
        if self.dialect == "postgresql":
            engine_kwargs["connect_args"] = self._postgresql_liveness(parsed)
        self.engine: sa.Engine = sa.create_engine(self.url, **engine_kwargs)
        if self.dialect == "postgresql":
            sa.event.listen(self.engine, "connect", self._postgresql_session)
        sa.event.listen(self.engine, "handle_error", invalidate_unusable)
        # Optuna's own tables, created and version-checked by Optuna's own code. Before
        # the SQLite hooks: Optuna's version check opens a second connection inside its
        # session, which an IMMEDIATE transaction would lock out.
        # An existing, current database is checked in one round trip; anything else takes
        # the full path (Optuna's create_all and version check, studyhall's migrations).
        current = schema_is_current(self.engine)
        if not current:
            retrying(ensure_optuna_schema, self.engine, self.url, retry_on=setup_retry)
        if self.dialect == "sqlite":
            _sqlite.install_hooks(self.engine)
            self.engine.dispose()  # connections opened before the hooks must not be reused
        self.optuna = SQLStorage(
            self.engine, self.url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period
        )
        if not current:
            retrying(self._migrate, retry_on=setup_retry)
        self.heartbeat = Heartbeat(self)
        if self.dialect == "sqlite":
            assert parsed.database is not None
            _sqlite.checkpointer.add(self.engine, parsed.database)

    def _postgresql_liveness(self, parsed: sa.URL) -> dict[str, Any]:
        # A host cut off from the database must notice within the grace period, not after
        # the kernel's ~15 minutes of retransmissions: unacknowledged data and silent peers
        # close the connection (a transient error, retried, then reported as a connection
        # problem). The URL's own settings win.
        grace_ms = self.grace_period * 1000
        liveness: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": max(1, self.grace_period // 2),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": grace_ms,
        }
        return {k: v for k, v in liveness.items() if k not in parsed.query}

    def _postgresql_session(self, dbapi_conn: Any, _record: Any) -> None:
        # A client that vanishes inside a transaction (cut link, SIGSTOP) would keep its row
        # locks, e.g. on the study's row every ask takes, until the server's TCP gives up:
        # every other host would wait. The server ends such a transaction after the grace
        # period, by when the host has lost its trials anyway.
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = {int(self.grace_period * 1000)}")
        dbapi_conn.commit()

    def _migrate(self) -> None:
        from studyhall.storage._migrate import upgrade

        upgrade(self.engine)

    def __repr__(self) -> str:
        return f"Storage({make_url(self.url).render_as_string(hide_password=True)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (connect, (self.url,), None)

    @contextlib.contextmanager
    def session(self, *, read: bool = False) -> Iterator[sa.Connection]:
        """A transaction on studyhall's tables: commit on success, roll back on error.

        Errors are translated into :class:`StorageError`; wrap the whole unit of work
        in :meth:`transaction` to have transient ones retried. ``read``: the block only
        reads (on SQLite it then waits for no writer).
        """
        try:
            with _sqlite.begun(self.engine, read=read) as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise
            raise StorageError(
                f"the database rejected a studyhall write ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from exc

    def transaction(self, fn: Callable[[sa.Connection], T], *, read: bool = False) -> T:
        """Run ``fn(conn)`` in one transaction, retrying the whole of it on transient errors (``read``: as in session)."""

        def attempt() -> T:
            with self.session(read=read) as conn:
                return fn(conn)

        return retrying(attempt)

    def now(self) -> float:
        """The database server's clock in epoch seconds (one clock for every host)."""

        from studyhall.storage._sql import db_clock_sql

        q = db_clock_sql(self.dialect)

        def read(conn: sa.Connection) -> float:
            return float(conn.exec_driver_sql(q).scalar_one())

        return self.transaction(read, read=True)

    def study_id(self, name: str) -> int | None:
        """The Optuna study id of ``name``, or None when there is no such study."""
        try:
            return self.optuna.get_study_id_from_name(name)
        except KeyError:
            return None

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials of ``study_id`` whose process stopped heartbeating.

        Optuna only looks at trials with a heartbeat row; a process that died
        between ``ask`` and its first heartbeat would leave a trial RUNNING
        forever, so a RUNNING trial without a row counts as stale after a minute,
        unless it was detached (its process exited normally and left it to be told
        from elsewhere).
        """
        from studyhall.storage.rdb._storage import DETACHED_ATTR

        t, hb, attrs = table("TrialModel"), table("TrialHeartbeatModel"), table("TrialSystemAttributeModel")
        detached = sa.exists().where(attrs.c.trial_id == t.c.trial_id, attrs.c.key == DETACHED_ATTR)

        def query(conn: sa.Connection) -> list[int]:
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            now = now.replace(tzinfo=None)
            rows = conn.execute(
                sa.select(t.c.trial_id, t.c.datetime_start, hb.c.heartbeat, detached)
                .select_from(t.outerjoin(hb, hb.c.trial_id == t.c.trial_id))
                .where(t.c.study_id == study_id, t.c.state == "RUNNING")
            ).all()
            stale = []
            utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Optuna stores starts in UTC
            unbeaten_for = max(60, 6 * self.grace_period)
            for trial_id, started, beat, is_detached in rows:
                if beat is not None:
                    silent = (now - beat).total_seconds() > self.grace_period
                else:
                    silent = (
                        not is_detached and started is not None and (utc_now - started).total_seconds() > unbeaten_for
                    )
                if silent:
                    stale.append(trial_id)
            return stale

        return self.transaction(query, read=True)

    def close(self) -> None:
        """Stop the heartbeat thread and close every pooled connection."""
        self.heartbeat.close()
        _sqlite.checkpointer.discard(self.engine)
        _uncache(self)
        self.engine.dispose()


_cache: dict[tuple[str, int, int], Storage] = {}
_cache_lock = threading.Lock()
_cache_pid = os.getpid()


def connect(
    url: str | Storage | None = None, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> Storage:
    """Open (or reuse, within this process) the studyhall storage at ``url``.

    Args:
        url: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``,
            ``mysql+pymysql://...``) or a Storage; default ``$STUDYHALL_STORAGE``,
            else ``sqlite:///studyhall.db``.
        heartbeat_interval: seconds between heartbeats of the trials this process runs;
            default ``$STUDYHALL_HEARTBEAT_INTERVAL``, else 1.
        grace_period: seconds without a heartbeat after which a RUNNING trial is stale
            (failed and retried, or put back in the queue if it never began); default
            ``$STUDYHALL_GRACE_PERIOD``, else 10. On PostgreSQL it also bounds how long a
            connection to a silent server, or a transaction of a silent client, lives.

    Raises:
        InvalidRequest: the URL is malformed or its scheme is not supported.

    Example:
        >>> st = connect("sqlite:///studyhall.db")  # doctest: +SKIP
    """
    global _cache_pid
    if isinstance(url, Storage):
        return url
    if heartbeat_interval is None:
        heartbeat_interval = _env_seconds(HEARTBEAT_ENV, 1)
    if grace_period is None:
        grace_period = _env_seconds(GRACE_ENV, 10)
    if heartbeat_interval < 1 or heartbeat_interval > grace_period:
        raise InvalidRequest(
            f"heartbeat_interval={heartbeat_interval} must be >= 1 and at most grace_period={grace_period}"
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


def _env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidRequest(f"${name}={text!r} must be a whole number of seconds >= 1; fix or unset it")
    return value


def _uncache(st: Storage) -> None:
    with _cache_lock:
        for k, v in list(_cache.items()):
            if v is st:
                del _cache[k]
