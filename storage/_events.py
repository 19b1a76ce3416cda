"""Rows of ``studyhall_events``: write one under its parent, merge data into it, read them back.

Every event has a materialised path of zero-padded ids (``0000000001.0000000007``,
like LangSmith's dotted_order), so a whole trace is one query ordered by path and
a subtree is a prefix. ``optimizer/events`` is the API over these rows (checked
data, worker messages, trees); this module only speaks SQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from studyhall.storage._errors import InvalidRequest
from studyhall.storage._schema import events
from studyhall.storage._sql import json_equals
from studyhall.storage._storage import Storage

ID_WIDTH = 10  # ids up to 10**10; fixed width keeps lexical path order = tree order
_path_type = events.c.path.type
_PATH_LEN = int(_path_type.length or 512) if isinstance(_path_type, sa.String) else 512
MAX_DEPTH = (_PATH_LEN + 1) // (ID_WIDTH + 1) - 1


class Placed(NamedTuple):
    """Where a written event sits: its id, path, depth and trace (children need all four)."""

    id: int
    path: str
    depth: int
    correlation_id: str


@dataclass
class NewEvent:
    """An event to write; ``parent`` is the parent's :class:`Placed` when the caller knows it (no lookup)."""

    event_type: str
    data: dict[str, Any]
    correlation_id: str | None
    parent_id: int | None
    study_id: int | None
    trial_id: int | None
    created_at: float
    parent: Placed | None = None


class EventRow(NamedTuple):
    """One stored event, its data decoded."""

    id: int
    correlation_id: str
    event_type: str
    parent_id: int | None
    trial_id: int | None
    created_at: float
    data: dict[str, Any]
    study_id: int | None
    depth: int
    path: str


def write_event(st: Storage, ev: NewEvent) -> Placed:
    """Insert one event beneath its parent (same trace, one level deeper); a root starts a new trace."""
    return st.transaction(lambda conn: _insert(conn, ev))


def _insert(conn: sa.Connection, ev: NewEvent) -> Placed:
    prefix, depth, corr = "", 0, ev.correlation_id
    if ev.parent_id is not None:
        parent = ev.parent if ev.parent is not None and ev.parent.id == ev.parent_id else _placed(conn, ev.parent_id)
        if corr is not None and corr != parent.correlation_id:
            raise InvalidRequest(
                f"correlation_id {corr!r} differs from its parent's ({parent.correlation_id!r}); "
                "a child belongs to its parent's trace, so leave correlation_id out"
            )
        prefix, depth, corr = parent.path + ".", parent.depth + 1, parent.correlation_id
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"events nest at most {MAX_DEPTH} deep; this one would be at depth {depth}")
    corr = corr or uuid.uuid4().hex
    values = {
        "correlation_id": corr,
        "event_type": ev.event_type,
        "parent_id": ev.parent_id,
        "depth": depth,
        "study_id": ev.study_id,
        "trial_id": ev.trial_id,
        "created_at": ev.created_at,
        "data": ev.data,
    }
    # The path needs the row's own id, which only the insert hands out: insert, then set it.
    key = conn.execute(sa.insert(events).values(path="", **values)).inserted_primary_key
    assert key is not None  # a single-row INSERT always reports its key
    event_id = int(key[0])
    path = prefix + str(event_id).zfill(ID_WIDTH)
    conn.execute(sa.update(events).where(events.c.id == event_id).values(path=path))
    return Placed(event_id, path, depth, corr)


def _placed(conn: sa.Connection, event_id: int) -> Placed:
    query = sa.select(events.c.path, events.c.depth, events.c.correlation_id).where(events.c.id == event_id)
    row = conn.execute(query).first()
    if row is None:
        raise InvalidRequest(f"parent event {event_id} does not exist; record the parent first")
    return Placed(event_id, row.path, row.depth, row.correlation_id)


def merge_event_data(st: Storage, event_id: int, update: Mapping[str, Any]) -> None:
    """Add ``update``'s keys to a stored event's data (InvalidRequest if there is no such event)."""

    def write(conn: sa.Connection) -> None:
        current = conn.execute(sa.select(events.c.data).where(events.c.id == event_id)).scalar_one_or_none()
        if current is None:
            raise InvalidRequest(f"event {event_id} does not exist")
        merged = {**_as_dict(current), **update}
        conn.execute(sa.update(events).where(events.c.id == event_id).values(data=merged))

    st.transaction(write)


def _as_dict(value: Any) -> dict[str, Any]:
    # MariaDB's JSON is LONGTEXT: some drivers hand back the text.
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value or {})


# Columns in EventRow's order, read positionally; data as raw text, decoded here in one call.
_COLUMNS = (
    events.c.id,
    events.c.correlation_id,
    events.c.event_type,
    events.c.parent_id,
    events.c.trial_id,
    events.c.created_at,
    sa.type_coerce(events.c.data, sa.Text).label("data"),
    events.c.study_id,
    events.c.depth,
    events.c.path,
)
_loads = json.loads


def _row(row: Any) -> EventRow:
    eid, corr, kind, parent, trial_id, created, data, study_id, depth, path = row
    decoded = _loads(data) if isinstance(data, (str, bytes)) else dict(data or {})  # psycopg may decode json itself
    return EventRow(eid, corr, kind, parent, trial_id, float(created), decoded, study_id, depth, path)


def read_events(
    st: Storage,
    *,
    correlation_id: str | None = None,
    event_types: Sequence[str] | None = None,
    trial_id: int | None = None,
    since: float | None = None,
    until: float | None = None,
    where: Mapping[str | tuple[str, ...], Any] | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[EventRow]:
    """Events matching every given condition, by id (oldest first unless ``newest_first``).

    ``where`` compares data fields for equality in SQL (a tuple key reaches into
    nested dicts); ``keep`` is a Python predicate on the data, applied after, before
    ``limit`` counts.
    """
    conds: list[sa.ColumnElement[bool]] = []
    if correlation_id is not None:
        conds.append(events.c.correlation_id == correlation_id)
    if event_types is not None:
        conds.append(events.c.event_type.in_(list(event_types)))
    if trial_id is not None:
        conds.append(events.c.trial_id == trial_id)
    if since is not None:
        conds.append(events.c.created_at >= float(since))
    if until is not None:
        conds.append(events.c.created_at <= float(until))
    for key, value in (where or {}).items():
        conds.append(json_equals(st.dialect, events.c.data, _json_path(key), _json_value(key, value)))
    stmt = sa.select(*_COLUMNS).where(*conds).order_by(events.c.id.desc() if newest_first else events.c.id)
    if limit is not None and keep is None:
        stmt = stmt.limit(limit)

    def read(conn: sa.Connection) -> list[EventRow]:
        out: list[EventRow] = []
        if limit == 0:
            return out
        for raw in conn.execute(stmt):
            row = _row(raw)
            if keep is not None and not keep(row.data):
                continue
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
        return out

    return st.transaction(read, read=True)


def _json_path(key: str | Sequence[str]) -> tuple[str, ...]:
    parts = (key,) if isinstance(key, str) else tuple(key)
    if not parts or not all(isinstance(p, str) and p and '"' not in p and "\\" not in p for p in parts):
        raise InvalidRequest(
            f"where keys are field names (or tuples of them for nested fields) without quotes "
            f"or backslashes; got {key!r:.60}"
        )
    return parts


def _json_value(key: Any, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InvalidRequest(f"where values are strings, numbers, booleans or None; got {type(value).__name__} for {key!r}")


def read_event(st: Storage, event_id: int) -> EventRow | None:
    """One event by id, or None."""
    query = sa.select(*_COLUMNS).where(events.c.id == event_id)
    raw = st.transaction(lambda conn: conn.execute(query).first(), read=True)
    return None if raw is None else _row(raw)


def read_trace(st: Storage, correlation_id: str) -> list[EventRow]:
    """Every event of one trace ordered by path: a parent always comes before its children."""
    query = sa.select(*_COLUMNS).where(events.c.correlation_id == correlation_id).order_by(events.c.path)
    return [_row(raw) for raw in st.transaction(lambda conn: conn.execute(query).all(), read=True)]
