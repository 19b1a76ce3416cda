"""Is a database already at the schemas this install knows? One round trip, no alembic.

Opening a storage used to run Optuna's ``create_all`` and version manager and
studyhall's alembic check every time: about 100 ms of imports and queries before a
process could ask its first trial. An existing database is almost always current, so
``schema_is_current`` reads both version tables in one statement and compares them
with the heads of the two migration folders, read as text. Anything unexpected (a
table missing, an older or newer revision, a folder that does not parse) answers
False and the caller takes the full, checking path.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import sqlalchemy as sa

_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")

# One statement on every backend: a missing table is an error, which means "not current".
_CURRENT = sa.text(
    "SELECT (SELECT MAX(version_num) FROM alembic_version), "
    "(SELECT MAX(version_num) FROM studyhall_alembic_version), "
    "(SELECT COUNT(*) FROM version_info)"
)


@functools.cache
def folder_head(versions: Path) -> str | None:
    """The single head revision of an alembic ``versions`` folder, or None if it has several or none."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev = _REVISION.search(text)
        if rev is None:
            continue
        revisions.add(rev.group(1))
        down = _DOWN.search(text)
        if down is not None:
            downs.update(_QUOTED.findall(down.group(1)))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _optuna_versions() -> Path:
    import optuna.storages._rdb

    return Path(optuna.storages._rdb.__file__).with_name("alembic") / "versions"


def _studyhall_versions() -> Path:
    return Path(__file__).with_name("_migrations") / "versions"


def schema_is_current(engine: sa.Engine) -> bool:
    """True when Optuna's and studyhall's tables are both at this install's newest revision."""
    optuna_head, own_head = folder_head(_optuna_versions()), folder_head(_studyhall_versions())
    if optuna_head is None or own_head is None:
        return False
    try:
        with engine.connect() as conn:
            row = conn.execute(_CURRENT).one()
    except sa.exc.SQLAlchemyError:
        return False
    return (row[0], row[1]) == (optuna_head, own_head) and bool(row[2])
