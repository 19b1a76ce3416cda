"""Storage URLs as the command line shows them (password hidden), and the version it reports.

``connect`` says in one line why a database cannot be used (a StorageError); the
command line prints that line. It only needs to know whether a SQLite file exists,
so that read-only commands do not create one, without importing SQLAlchemy.
"""

from __future__ import annotations

import re
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
