"""What the command line says when a database cannot be used: one line, what is wrong and what to do.

``connect`` and Optuna let some failures through untranslated (a corrupted SQLite
file, a newer schema, a database that does not exist or refuses the user); this
module names them for a person, without importing SQLAlchemy (the optimizer does
not speak SQL): the driver's own error is read from the exception chain.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import metadata

_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?:///(?P<path>[^?]*)")
_PASSWORD = re.compile(r"(?<=://)(?P<user>[^:/@]*):[^@/]*@")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return _PASSWORD.sub(r"\g<user>:***@", url)


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL (None for other databases)."""
    m = _SQLITE_URL.match(url)
    return m.group("path") if m else None


def studyhall_version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("studyhall")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error a SQLAlchemy error wraps (``.orig``), and their causes."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        orig = getattr(e, "orig", None)
        context = None if e.__suppress_context__ else e.__context__
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__, context]
    return seen


def _from_sqlalchemy(e: BaseException) -> bool:
    return any(c.__module__.startswith("sqlalchemy") for c in type(e).__mro__)


def _driver_message(e: BaseException) -> str:
    """The server's own words: psycopg's after 'FATAL:', pymysql's (code, message)."""
    args = e.args
    if len(args) == 2 and isinstance(args[0], int):  # pymysql: (1049, "Unknown database 'x'")
        return str(args[1])
    text = str(e).strip()
    if "FATAL:" in text:
        text = text.split("FATAL:", 1)[1]
    return " ".join(text.split())[:300]


def describe_failure(exc: BaseException, url: str) -> str | None:
    """One line saying why the database at ``url`` cannot be used and what to do; None if not a database failure."""
    where = redact(url)
    path = sqlite_path(url)
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, sqlite3.OperationalError) and path is not None:
            if "unable to open" in str(e):
                return (
                    f"cannot open the SQLite file {path}: it is a directory, or its folder cannot be written; "
                    "give --storage sqlite:///path/to/a/file.db in a folder you can write"
                )
            if "readonly" in str(e):
                return f"the SQLite file {path} is read-only ({e}); make it writable or copy it somewhere you can write"
        if isinstance(e, sqlite3.DatabaseError) and path is not None:
            return (
                f"{path} is not a usable studyhall database ({e}): it is corrupted, truncated or not a "
                "database at all; restore it from a backup, or give --storage another file"
            )
        if isinstance(e, OSError) and e.filename is not None and path is not None:
            return (
                f"cannot create the SQLite file {path}: {e.strerror or e} ({e.filename}); "
                "give --storage sqlite:///path/to/a/file.db in a folder you can write"
            )
        text = str(e)
        if "Can't locate revision" in text:
            return (
                f"the database at {where} was written by a newer studyhall than this one ({studyhall_version()}): "
                f"{text}; upgrade studyhall (pip install -U studyhall), or use another database"
            )
        if isinstance(e, RuntimeError) and "optuna version" in text and "compatible" in text:
            return f"the database at {where} was written by a newer Optuna: {' '.join(text.split())}"
    for e in chain:
        if _from_sqlalchemy(e):
            orig = getattr(e, "orig", None)
            why = _driver_message(orig if isinstance(orig, BaseException) else e)
            return (
                f"cannot use the database at {where}: {why}; check the URL, that the database exists "
                "and that its user may connect to it"
            )
    return None
