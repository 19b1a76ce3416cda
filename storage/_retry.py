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


def is_setup_race(exc: BaseException | None) -> bool:
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


def setup_retry(exc: BaseException) -> bool:
    """Transient, or the race of processes creating the schema at once."""
    return is_transient(exc) or is_setup_race(exc)
