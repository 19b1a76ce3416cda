"""Which database errors are worth retrying, and the bounded backoff that retries them.

Its own module so that everything in ``storage`` (the Storage, the heartbeat
thread, the row modules) retries the same way without importing each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
import tenacity

from studyhall.storage._errors import TransientStorageError

T = TypeVar("T")

# A connection that can never be used again, though the driver does not call it a
# disconnect: psycopg's answer to a connection killed in the middle of a command and
# used once more (seen once while connections were killed every 0.7 s). The engine
# treats these as disconnects (``invalidate_unusable``), so a retry gets a new one.
_UNUSABLE_TEXT = ("another command is already in progress",)
# Substrings and codes that mark an error worth retrying, by backend. The connection
# ones also mean "the network or the server is away" (the final error says so).
_CONNECTION_TEXT = (
    "server closed the connection",
    "connection reset",
    "lost connection",
    "gone away",
    "connection refused",
    "terminating connection",
    "network is unreachable",
    "no route to host",
    "host is unreachable",
    "connection timed out",
    "timeout expired",  # psycopg's connect_timeout
    "timed out",
    "broken pipe",
    "can't connect to",  # MySQL's client, whatever the errno
    "connection is bad",
    *_UNUSABLE_TEXT,
)
_TRANSIENT_TEXT = (
    "database is locked",
    "database table is locked",
    "deadlock",
    "could not serialize",
    "lock wait timeout",
    *_CONNECTION_TEXT,
)
_CONNECTION_SQLSTATE = {"57P01", "08006", "08003", "08001"}
_TRANSIENT_SQLSTATE = {"40001", "40P01", *_CONNECTION_SQLSTATE}
_CONNECTION_MYSQL = {2003, 2006, 2013}
_TRANSIENT_MYSQL = {1205, 1213, *_CONNECTION_MYSQL}
# A connection's OSError as the driver or the pool may hand it up unwrapped.
_CONNECTION_OSERRORS = (ConnectionError, TimeoutError)


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or anything in its cause chain) is a retryable database error."""
    return _matches(exc, _TRANSIENT_SQLSTATE, _TRANSIENT_MYSQL, _TRANSIENT_TEXT)


def is_connection_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause chain) says the database could not be reached or dropped us.

    Unreachable network, refused, reset or timed-out connections, a server gone away:
    transient (retried), and worded as a connection problem when the retries run out.
    """
    return _matches(exc, _CONNECTION_SQLSTATE, _CONNECTION_MYSQL, _CONNECTION_TEXT)


def invalidate_unusable(ctx: sa.engine.ExceptionContext) -> None:
    """An engine's ``handle_error`` hook: a connection left unusable is dropped from the pool, as a disconnect is."""
    if not ctx.is_disconnect and any(t in str(ctx.original_exception).lower() for t in _UNUSABLE_TEXT):
        ctx.is_disconnect = True


def _matches(exc: BaseException | None, sqlstates: set[str], mysql: set[int], texts: tuple[str, ...]) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, _CONNECTION_OSERRORS):
            return True
        orig = getattr(exc, "orig", None)
        if orig is not None:
            if getattr(orig, "sqlstate", None) in sqlstates:
                return True
            args = getattr(orig, "args", ())
            if args and isinstance(args[0], int) and args[0] in mysql:
                return True
        if isinstance(exc, (sa.exc.OperationalError, sqlite3.OperationalError)) or type(exc).__name__ in (
            "StorageInternalError",
            "OperationalError",
        ):
            text = str(exc).lower()
            if any(t in text for t in texts):
                return True
        exc = _next_in_chain(exc)
        seen += 1
    return False


def _next_in_chain(exc: BaseException) -> BaseException | None:
    # A wrapper's cause, or the error a database error was raised while handling. Not the
    # context of any other exception: an answer such as "the row changed" raised on a
    # retry that followed a dropped connection is that answer, not a connection problem.
    if exc.__cause__ is not None:
        return exc.__cause__
    wrapper = isinstance(exc, (sa.exc.SQLAlchemyError, OSError, sqlite3.Error)) or type(exc).__name__ in (
        "StorageInternalError",
        "OperationalError",
    )
    return exc.__context__ if wrapper and not exc.__suppress_context__ else None


_SETUP_RACE_TEXT = (
    "already exists",
    "duplicate key",
    "duplicate entry",
    "unique constraint failed",
    "duplicate column",
)


def is_setup_race(exc: BaseException | None) -> bool:
    # Processes creating the schema at the same moment: the loser's CREATE TABLE/TYPE
    # hits "already exists" or a duplicate key in the catalog, its ADD COLUMN (MySQL and
    # SQLite say "duplicate column name"; their DDL does not wait for the winner's
    # transaction); trying again sees the winner's tables and creates nothing.
    seen = 0
    while exc is not None and seen < 8:
        text = str(exc).lower()
        if any(t in text for t in _SETUP_RACE_TEXT):
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
            raise TransientStorageError(transient_message(exc, attempts)) from exc
        raise


def transient_message(exc: BaseException, attempts: int) -> str:
    """What to say when a transient error outlived ``attempts`` tries: a connection problem, or a busy database."""
    detail = f"{type(exc).__name__}: {_first_line(exc)}"
    if is_connection_error(exc):
        return (
            f"could not reach the database through {attempts} attempts: the connection failed ({detail}); "
            "check the network path to the server and that the server is up, then retry"
        )
    return (
        f"the database stayed busy through {attempts} attempts ({detail}); check that the server "
        "is not overloaded or holding long locks, then retry"
    )


def _first_line(exc: BaseException) -> str:
    # The driver's own first line says what failed; SQLAlchemy's wrapper repeats its class name.
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]


def setup_retry(exc: BaseException) -> bool:
    """Transient, or the race of processes creating the schema at once."""
    return is_transient(exc) or is_setup_race(exc)
