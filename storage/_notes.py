"""optuna-dashboard's trial notes, written the way ``optuna_dashboard.save_note`` writes them.

A note is two kinds of study system attributes in Optuna's own table:
``dashboard:{trial_id}:note_ver`` and ``dashboard:{trial_id}:note_str:{i}``, the
text cut in parts of ``NOTE_PART`` characters. Written inside the caller's
transaction (a trial's tell), so a finished trial always has its note.

A told trial almost never has a note yet, so its rows go in with one statement
that inserts them all only if there is no ``note_ver`` row (``INSERT ... SELECT
... WHERE NOT EXISTS``, a :class:`DriverStatement`); only when it inserts nothing
does the note someone saved while the trial ran get read and merged.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from studyhall.storage._optuna import table
from studyhall.storage._sql import DriverStatement

NOTE_PART = 2045  # optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH


def note_writer(study_id: int, trial_id: int, body: str) -> Callable[[sa.Connection], None]:
    """The write of a trial's note, to run inside the tell's transaction (``finish_trial(extra=...)``)."""
    return lambda conn: write_trial_note(conn, study_id, trial_id, body)


def write_trial_note(conn: sa.Connection, study_id: int, trial_id: int, body: str) -> None:
    """Store ``body`` as the trial's note, in ``conn``'s transaction.

    A note someone saved while the trial ran is kept, with ``body`` appended below it.
    """
    ver_key = f"dashboard:{trial_id}:note_ver"
    prefix = f"dashboard:{trial_id}:note_str:"
    chunks = [body[i : i + NOTE_PART] for i in range(0, len(body), NOTE_PART)] or [""]
    first = {"study_id": study_id, "ver_key": ver_key, "ver": "1"}
    for i, c in enumerate(chunks):
        first[f"key{i}"], first[f"value{i}"] = f"{prefix}{i}", json.dumps(c)
    if _insert_new(conn.dialect, len(chunks)).execute(conn, [first]).rowcount:
        return  # all or nothing: the statement inserts every row or none
    t, read_version, insert = _statements()
    ver = conn.execute(read_version, {"study_id": study_id, "key": ver_key}).scalar_one_or_none()
    version = 1
    if ver is not None:  # rare: keep the existing note's text
        part_rows = sa.select(t.c.key, t.c.value_json).where(
            t.c.study_id == study_id, t.c.key.startswith(prefix, autoescape=True)
        )
        parts: dict[str, str] = dict(conn.execute(part_rows).all())
        old = "".join(json.loads(parts[f"{prefix}{i}"]) for i in range(len(parts)) if f"{prefix}{i}" in parts)
        body = (old.rstrip() + "\n\n" + body) if old.strip() else body
        version = int(json.loads(ver)) + 1
        conn.execute(sa.delete(t).where(t.c.study_id == study_id, sa.or_(t.c.key == ver_key, t.c.key.in_(list(parts)))))
    chunks = [body[i : i + NOTE_PART] for i in range(0, len(body), NOTE_PART)] or [""]
    conn.execute(
        insert,
        [{"study_id": study_id, "key": ver_key, "value_json": json.dumps(version)}]
        + [{"study_id": study_id, "key": f"{prefix}{i}", "value_json": json.dumps(c)} for i, c in enumerate(chunks)],
    )


@functools.lru_cache(maxsize=64)
def _insert_new(dialect: sa.Dialect, n_parts: int) -> DriverStatement:
    """The note's rows (``note_ver`` = 1 and ``n_parts`` parts) inserted only if it has no ``note_ver`` yet."""
    t = table("StudySystemAttributeModel")
    sid = sa.bindparam("study_id", type_=sa.Integer)
    key_t, value_t = t.c.key.type, t.c.value_json.type
    rows = [(sa.bindparam("ver_key", type_=key_t), sa.bindparam("ver", type_=value_t))]
    rows += [(sa.bindparam(f"key{i}", type_=key_t), sa.bindparam(f"value{i}", type_=value_t)) for i in range(n_parts)]
    parts = sa.union_all(*(sa.select(k.label("key"), v.label("value_json")) for k, v in rows)).subquery("parts")
    no_note = ~sa.exists().where(t.c.study_id == sid, t.c.key == sa.bindparam("ver_key", type_=key_t))
    rows_in = sa.select(sid, parts.c.key, parts.c.value_json).where(no_note)
    return DriverStatement(sa.insert(t).from_select(["study_id", "key", "value_json"], rows_in), dialect)


@functools.cache
def _statements() -> tuple[sa.Table, sa.Select[Any], sa.Insert]:
    # Built once: every told trial with a distribution writes a note.
    t = table("StudySystemAttributeModel")
    read_version = sa.select(t.c.value_json).where(
        t.c.study_id == sa.bindparam("study_id"), t.c.key == sa.bindparam("key")
    )
    return t, read_version, sa.insert(t)
