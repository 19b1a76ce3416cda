"""Structured events with causal trees: ``record``, ``query``, ``trace_tree``.

Every event is a row of ``studyhall_events`` with a materialised path of
zero-padded ids (``0000000001.0000000007``, like LangSmith's dotted_order), so a
whole trace is one query ordered by path and a subtree is a prefix::

    record(storage, "retrieve", {...})            -> 1   path 0000000001
    record(storage, "rank", {...}, parent_id=1)   -> 7   path 0000000001.0000000007
    trace_tree(storage, correlation_id)           -> [TraceNode(event 1, children=[7])]

In a pool worker (``bridge.worker_channel()`` is not None) an event recorded
without a storage is sent to the parent instead, which writes it in
:func:`handle_worker_message`; ids there are opaque local strings that the parent
maps to the rows it wrote, so children still nest under their parents::

    worker: record(None, ...) ── channel.send({"studyhall": "event", ...}) ──> parent:
            handle_worker_message(storage, payload, study_id, trial_id) ──> row

Example:
    >>> root = events.record(st, "run", {"q": "2+2?"})  # doctest: +SKIP
    >>> events.record(st, "answer", {"text": "4"}, parent_id=root)  # doctest: +SKIP
    >>> events.query(st, event_type="answer", where={"text": "4"})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
import time
import types
import typing
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from studyhall.storage import InvalidRequest, Storage, StudyhallError
from studyhall.storage._schema import events as _events

__all__ = [
    "Event",
    "TraceNode",
    "finish",
    "get",
    "handle_worker_message",
    "note_step",
    "query",
    "record",
    "register",
    "registered",
    "trace_tree",
    "trial_buffer",
    "trial_steps",
    "unregister",
    "validate",
    "worker_channel",
    "worker_sink",
]

log = logging.getLogger(__name__)

ID_WIDTH = 10  # ids up to 10**10; fixed width keeps lexical path order = tree order
_path_type = _events.c.path.type
_PATH_LEN = int(_path_type.length or 512) if isinstance(_path_type, sa.String) else 512
MAX_DEPTH = (_PATH_LEN + 1) // (ID_WIDTH + 1) - 1
MESSAGE_KEY = "studyhall"
TRIAL_STEPS = 20  # the last steps kept per trial for its ``trace`` user_attr


@dataclass(slots=True)
class Event:
    """One stored event: who caused it (``parent_id``), which trace and trial it belongs to."""

    id: int
    correlation_id: str
    event_type: str
    parent_id: int | None
    trial_id: int | None
    created_at: float
    data: dict[str, Any]
    study_id: int | None = None
    depth: int = 0
    path: str = ""


@dataclass(slots=True)
class TraceNode:
    """An event of a trace tree and the events it caused, in the order they happened."""

    event: Event
    children: list[TraceNode] = field(default_factory=list)

    def walk(self) -> Iterable[TraceNode]:
        """This node and every node below it, depth first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


# ---- registered event types -------------------------------------------------------------

_types: dict[str, type] = {}
_types_lock = threading.Lock()


def register(event_type: str, cls: type) -> None:
    """Declare the fields of ``event_type`` with a dataclass; later records are checked against it.

    Example:
        >>> @dataclasses.dataclass
        ... class Retrieved:
        ...     query: str
        ...     k: int
        >>> events.register("retrieved", Retrieved)  # doctest: +SKIP
    """
    _check_type_name(event_type)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise InvalidRequest(f"register({event_type!r}, ...) takes a dataclass type; got {cls!r:.80}")
    typing.get_type_hints(cls)  # fail now, not at the first record, on an unresolvable annotation
    with _types_lock:
        _types[event_type] = cls


def unregister(event_type: str) -> None:
    """Forget the declared fields of ``event_type`` (any JSON dict is accepted again)."""
    with _types_lock:
        _types.pop(event_type, None)


def registered() -> dict[str, type]:
    """The declared event types and their dataclasses."""
    with _types_lock:
        return dict(_types)


def _check_type_name(event_type: Any) -> str:
    if not isinstance(event_type, str) or not event_type or len(event_type) > 128:
        raise InvalidRequest(f"an event type is a string of 1-128 characters; got {event_type!r:.60}")
    return event_type


def validate(event_type: str, data: Any) -> dict[str, Any]:
    """``data`` as the JSON-ready dict to store, or InvalidRequest saying what does not fit."""
    _check_type_name(event_type)
    cls = _types.get(event_type)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        if cls is not None and not isinstance(data, cls):
            raise InvalidRequest(
                f"event type {event_type!r} is registered with {cls.__name__}; got a {type(data).__name__}"
            )
        out = dataclasses.asdict(data)
    elif isinstance(data, Mapping):
        out = dict(data)
    elif data is None and cls is None:
        out = {}
    else:
        raise InvalidRequest(f"event data must be a dict or a dataclass instance; got {type(data).__name__}")
    if cls is not None:
        out = _check_fields(event_type, cls, out)
    return _json_ready(f"the data of event {event_type!r}", out)


def _json_ready(what: str, out: dict[str, Any]) -> dict[str, Any]:
    for key in out:
        if not isinstance(key, str):
            raise InvalidRequest(f"{what} has a key that is not a string: {key!r:.60}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"{what} is not JSON-serialisable ({exc}); pass plain dicts, lists, strings, "
            "finite numbers, booleans and None"
        ) from exc
    return out


def _check_fields(event_type: str, cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - set(fields), key=str)
    if extra:
        raise InvalidRequest(f"event {event_type!r} ({cls.__name__}) has no field(s) {', '.join(map(str, extra))}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise InvalidRequest(f"event {event_type!r} ({cls.__name__}) is missing field {name!r}")
        problem = _type_problem(value, hints.get(name, Any))
        if problem:
            raise InvalidRequest(f"event {event_type!r} field {name!r}: {problem}")
        out[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
    return out


def _type_problem(value: Any, tp: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``tp`` (None when it does or cannot be told)."""
    if tp is Any or tp is object:
        return None
    if tp is None or tp is type(None):
        return None if value is None else f"expected None, got {type(value).__name__}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else f"expected {_name(tp)}, got {type(value).__name__}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {list(args)!r}, got {value!r:.40}"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected float, got {type(value).__name__}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected int, got {type(value).__name__}"
    if tp in (bool, str):
        return None if isinstance(value, tp) else f"expected {tp.__name__}, got {type(value).__name__}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return None
        if isinstance(value, Mapping):
            try:
                _check_fields(tp.__name__, tp, dict(value))
            except InvalidRequest as exc:
                return str(exc)
            return None
        return f"expected {tp.__name__}, got {type(value).__name__}"
    container = origin or tp
    if container in (list, tuple, Sequence, typing.Sequence, set, frozenset):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return f"expected a list, got {type(value).__name__}"
        item = args[0] if args and not (container is tuple and len(args) != 2) else Any
        if container is tuple and len(args) == 2 and args[1] is not Ellipsis:
            item = Any
        for i, v in enumerate(value):
            problem = _type_problem(v, item)
            if problem:
                return f"item {i}: {problem}"
        return None
    if container in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            return f"expected a dict, got {type(value).__name__}"
        vt = args[1] if len(args) == 2 else Any
        for k, v in value.items():
            if not isinstance(k, str):
                return f"keys must be strings, got {k!r:.40}"
            problem = _type_problem(v, vt)
            if problem:
                return f"key {k!r}: {problem}"
        return None
    if isinstance(tp, type):
        return None if isinstance(value, tp) else f"expected {tp.__name__}, got {type(value).__name__}"
    return None  # an annotation this checker does not understand: let JSON decide


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ---- writing ----------------------------------------------------------------------------


def _pad(event_id: int) -> str:
    return str(event_id).zfill(ID_WIDTH)


_study_of_trial: dict[int, int] = {}  # trial ids never move between studies: cache forever


def _trial_ids(st: Storage, trial: Any) -> tuple[int | None, int | None]:
    """(study_id, trial_id) of a TrialHandle, FrozenTrial, optuna Trial or optuna trial id."""
    if trial is None:
        return None, None
    study = getattr(trial, "study", None)
    trial_id = getattr(trial, "trial_id", None)
    if trial_id is None:
        trial_id = getattr(trial, "_trial_id", None)
    if trial_id is None and isinstance(trial, int) and not isinstance(trial, bool):
        trial_id = trial
    if not isinstance(trial_id, int) or trial_id < 0:
        raise InvalidRequest(
            f"trial= takes a TrialHandle, a FrozenTrial, an optuna Trial or an optuna trial id; got {trial!r:.80}"
        )
    study_id = getattr(study, "_study_id", None) or _study_of_trial.get(trial_id)
    if study_id is None:
        from optuna.storages._rdb import models

        t = models.TrialModel.__table__

        def read(conn: sa.Connection) -> int | None:
            return conn.execute(sa.select(t.c.study_id).where(t.c.trial_id == trial_id)).scalar_one_or_none()

        study_id = st.transaction(read)
        if study_id is None:
            raise InvalidRequest(f"there is no trial with id {trial_id} in {st!r}")
    _study_of_trial[trial_id] = study_id
    return study_id, trial_id


@dataclass
class _Pending:
    event_type: str
    data: dict[str, Any]
    correlation_id: str | None
    parent_id: int | None
    study_id: int | None
    trial_id: int | None
    created_at: float
    parent_row: tuple[int, str, int, str] | None = None  # (id, path, depth, correlation) when known


def _write(conn: sa.Connection, ev: _Pending) -> tuple[int, str, int, str]:
    """Insert one event in ``conn``'s transaction; (id, path, depth, correlation_id)."""
    prefix, depth, corr = "", 0, ev.correlation_id
    if ev.parent_id is not None:
        if ev.parent_row is not None and ev.parent_row[0] == ev.parent_id:
            _, parent_path, parent_depth, parent_corr = ev.parent_row
        else:
            row = conn.execute(
                sa.select(_events.c.path, _events.c.depth, _events.c.correlation_id).where(_events.c.id == ev.parent_id)
            ).first()
            if row is None:
                raise InvalidRequest(f"parent event {ev.parent_id} does not exist; record the parent first")
            parent_path, parent_depth, parent_corr = row.path, row.depth, row.correlation_id
        if corr is not None and corr != parent_corr:
            raise InvalidRequest(
                f"correlation_id {corr!r} differs from its parent's ({parent_corr!r}); "
                "a child belongs to its parent's trace, so leave correlation_id out"
            )
        prefix, depth, corr = parent_path + ".", parent_depth + 1, parent_corr
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
    key = conn.execute(sa.insert(_events).values(path="", **values)).inserted_primary_key
    assert key is not None  # a single-row INSERT always reports its key
    event_id = int(key[0])
    path = prefix + _pad(event_id)
    conn.execute(sa.update(_events).where(_events.c.id == event_id).values(path=path))
    return event_id, path, depth, corr


def _check_correlation(correlation_id: Any) -> str | None:
    if correlation_id is None:
        return None
    if not isinstance(correlation_id, str) or not correlation_id or len(correlation_id) > 64:
        raise InvalidRequest(f"correlation_id is a string of 1-64 characters; got {correlation_id!r:.80}")
    return correlation_id


def record(
    storage: Storage | str | None,
    event_type: str,
    data: Any = None,
    correlation_id: str | None = None,
    parent_id: int | str | None = None,
    trial: Any = None,
) -> int | str:
    """Store one event and return its id.

    Args:
        storage: where to write; None inside a pool worker sends it to the parent instead.
        event_type: a name (1-128 characters); registered types check ``data``'s fields.
        data: a JSON-serialisable dict or a dataclass instance.
        correlation_id: the trace it belongs to; a root gets a new uuid, a child its parent's.
        parent_id: the event that caused this one.
        trial: a TrialHandle, FrozenTrial, optuna Trial or optuna trial id to tie it to.

    Returns:
        The event's id (in a worker without storage: an opaque id valid as ``parent_id``).

    Raises:
        InvalidRequest: bad data, unknown parent, no storage outside a pool worker.
    """
    if storage is None:
        channel = worker_channel()
        if channel is None:
            raise InvalidRequest(
                f"record({event_type!r}) needs a storage (a Storage or URL) outside a pool worker"
            )
        return _send(channel, "record", event_type=event_type, data=validate(event_type, data),
                     correlation_id=_check_correlation(correlation_id), parent=parent_id,
                     trial_id=_plain_trial_id(trial), created_at=time.time())
    return _record_row(storage, event_type, data, correlation_id, parent_id, trial)[0]


def _record_row(
    storage: Storage | str,
    event_type: str,
    data: Any,
    correlation_id: str | None,
    parent_id: int | str | None,
    trial: Any,
    parent_row: tuple[int, str, int, str] | None = None,
) -> tuple[int, str, int, str]:
    """:func:`record` to a storage, returning (id, path, depth, correlation_id)."""
    from studyhall.storage import connect

    payload = validate(event_type, data)
    correlation_id = _check_correlation(correlation_id)
    st = connect(storage)
    if isinstance(parent_id, str):
        parent_id = _resolve_local(parent_id)
    if parent_id is not None and (not isinstance(parent_id, int) or isinstance(parent_id, bool)):
        raise InvalidRequest(f"parent_id must be an event id; got {parent_id!r:.60}")
    study_id, trial_id = _trial_ids(st, trial)
    ev = _Pending(event_type, payload, correlation_id, parent_id, study_id, trial_id, time.time(), parent_row)
    return st.transaction(lambda conn: _write(conn, ev))


def finish(storage: Storage | str | None, event_id: int | str, data: Mapping[str, Any]) -> None:
    """Merge ``data`` into a recorded event (a span's duration and outcome, known at its end)."""
    update = _json_ready("the data of finish()", dict(data))
    if storage is None:
        channel = worker_channel()
        if channel is None:
            raise InvalidRequest("finish() needs a storage (a Storage or URL) outside a pool worker")
        channel.send({MESSAGE_KEY: "event", "op": "finish", "local_id": event_id, "data": update})
        return
    from studyhall.storage import connect

    target = _resolve_local(event_id) if isinstance(event_id, str) else event_id
    _merge(connect(storage), target, update)


def _merge(st: Storage, event_id: int, update: Mapping[str, Any]) -> None:
    def write(conn: sa.Connection) -> None:
        current = conn.execute(sa.select(_events.c.data).where(_events.c.id == event_id)).scalar_one_or_none()
        if current is None:
            raise InvalidRequest(f"event {event_id} does not exist")
        merged = {**_as_dict(current), **update}
        conn.execute(sa.update(_events).where(_events.c.id == event_id).values(data=merged))

    st.transaction(write)


def _as_dict(value: Any) -> dict[str, Any]:
    # MariaDB's JSON is LONGTEXT: some drivers hand back the text.
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value or {})


def _plain_trial_id(trial: Any) -> int | None:
    if trial is None:
        return None
    tid = getattr(trial, "trial_id", getattr(trial, "_trial_id", trial))
    return tid if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 else None


# ---- pool workers: send to the parent, which writes ------------------------------------

_worker_fn: Callable[[], Any] | None = None


def worker_channel() -> Any:
    """``bridge.worker_channel()`` when a pool exists (None outside a pool task)."""
    global _worker_fn
    if _worker_fn is None:
        try:
            from studyhall.bridge import worker_channel as fn
        except (ImportError, AttributeError):  # the pool is not built in this checkout
            return None
        _worker_fn = fn
    return _worker_fn()


_local_prefix = ""
_local_pid = -1
_local_counter = itertools.count(1)


def _local_id() -> str:
    global _local_prefix, _local_pid, _local_counter
    if _local_pid != os.getpid():  # a forked worker must not reuse its parent's ids
        _local_prefix, _local_pid, _local_counter = uuid.uuid4().hex[:16], os.getpid(), itertools.count(1)
    return f"{_local_prefix}-{next(_local_counter)}"


def _send(channel: Any, op: str, **fields: Any) -> str:
    local_id = fields.pop("local_id", None) or _local_id()
    channel.send({MESSAGE_KEY: "event", "op": op, "local_id": local_id, **fields})
    return local_id


# Parent side: worker-local id -> (row id, path, depth, correlation id), newest last.
_MAX_LOCAL = 200_000
_local_rows: OrderedDict[str, tuple[int, str, int, str]] = OrderedDict()
_local_lock = threading.Lock()


def _resolve_local(local_id: str) -> int:
    with _local_lock:
        row = _local_rows.get(local_id)
    if row is None:
        raise InvalidRequest(f"unknown event id {local_id!r}; ids of a worker's events are valid in that trial only")
    return row[0]


def handle_worker_message(storage: Storage, payload: Any, study_id: int | None = None, trial_id: int | None = None) -> bool:
    """Write an event a pool worker sent; False when ``payload`` is not an event message.

    Give it to ``pool.submit(..., on_send=...)`` (``optimize`` does) with the trial the
    task runs; the worker's steps also feed that trial's ``trace`` (see :func:`trial_steps`).
    A message that cannot be written is logged and dropped: one bad event must not
    fail the trial that sent it.
    """
    if not isinstance(payload, Mapping) or payload.get(MESSAGE_KEY) != "event":
        return False
    op, local_id = payload.get("op"), str(payload.get("local_id"))
    try:
        if op == "record":
            step = payload.get("step")
            tid = trial_id if trial_id is not None else payload.get("trial_id")
            if step is not None and tid is not None:
                note_step(tid, step)
            _record_remote(storage, payload, local_id, study_id, tid)
        elif op == "finish":
            raw = payload.get("local_id")
            if isinstance(raw, str):
                with _local_lock:
                    row = _local_rows.get(raw)
            elif isinstance(raw, int) and not isinstance(raw, bool):
                row = (raw, "", 0, "")
            else:
                raise InvalidRequest(f"a worker's finish() names no event id; got {raw!r:.60}")
            if row is not None:
                _merge(storage, row[0], _json_ready("a worker's finish()", dict(payload.get("data") or {})))
        elif op == "step":  # a step kept for the trial's trace only, with nowhere to store it
            tid = trial_id if trial_id is not None else payload.get("trial_id")
            if tid is not None and payload.get("step") is not None:
                note_step(tid, payload["step"])
        else:
            log.warning("ignoring an event message with unknown op %r", op)
    except StudyhallError as exc:
        log.warning("dropped an event sent by a worker (%s: %s)", type(exc).__name__, exc)
    return True


def worker_sink(storage: Storage, trial: Any) -> Callable[[Any], None]:
    """An ``on_send`` for the pool task running ``trial`` (an optuna Trial): its events land here."""
    study_id = getattr(getattr(trial, "study", None), "_study_id", None)
    trial_id = _plain_trial_id(trial)

    def on_send(payload: Any) -> None:
        handle_worker_message(storage, payload, study_id, trial_id)

    return on_send


def _record_remote(st: Storage, payload: Mapping[str, Any], local_id: str, study_id: int | None, trial_id: int | None) -> None:
    parent = payload.get("parent")
    parent_row: tuple[int, str, int, str] | None = None
    if isinstance(parent, str):
        with _local_lock:
            parent_row = _local_rows.get(parent)
        if parent_row is None:
            raise InvalidRequest(f"the parent {parent!r} of a worker's event was never written")
        parent = parent_row[0]
    if study_id is None and trial_id is not None:
        study_id = _trial_ids(st, trial_id)[0]
    ev = _Pending(
        str(payload.get("event_type")),
        dict(payload.get("data") or {}),
        payload.get("correlation_id"),
        parent,
        study_id,
        trial_id,
        float(payload.get("created_at") or time.time()),
        parent_row,
    )
    row = st.transaction(lambda conn: _write(conn, ev))
    with _local_lock:
        _local_rows[local_id] = row
        while len(_local_rows) > _MAX_LOCAL:
            _local_rows.popitem(last=False)


# ---- the last steps of each running trial (for the ``trace`` user_attr) ------------------

_MAX_TRIALS = 4096
_trial_buffers: OrderedDict[int, deque[dict[str, Any]]] = OrderedDict()
_buffers_lock = threading.Lock()


def trial_buffer(trial_id: int) -> deque[dict[str, Any]]:
    """The ring of the last steps recorded for ``trial_id`` in this process (created on demand)."""
    with _buffers_lock:
        buf = _trial_buffers.get(trial_id)
        if buf is None:
            buf = _trial_buffers[trial_id] = deque(maxlen=TRIAL_STEPS)
            while len(_trial_buffers) > _MAX_TRIALS:
                _trial_buffers.popitem(last=False)
        return buf


def note_step(trial_id: int, step: Mapping[str, Any]) -> None:
    """Remember ``step`` as one of the last steps of ``trial_id``."""
    trial_buffer(int(trial_id)).append(dict(step))


def trial_steps(trial_id: int, *, clear: bool = False) -> list[dict[str, Any]]:
    """The last steps (name, data, ...) recorded for ``trial_id`` here or by its worker."""
    with _buffers_lock:
        buf = _trial_buffers.pop(trial_id, None) if clear else _trial_buffers.get(trial_id)
        return list(buf) if buf else []


# ---- reading ----------------------------------------------------------------------------


# Columns in a fixed order, read positionally; data as raw text, decoded here in one call.
_COLUMNS = (
    _events.c.id, _events.c.correlation_id, _events.c.event_type, _events.c.parent_id, _events.c.trial_id,
    _events.c.created_at, sa.type_coerce(_events.c.data, sa.Text).label("data"), _events.c.study_id,
    _events.c.depth, _events.c.path,
)
_loads = json.loads


def _to_event(row: Any) -> Event:
    eid, corr, kind, parent, trial_id, created, data, study_id, depth, path = row
    return Event(
        eid, corr, kind, parent, trial_id, float(created),
        _loads(data) if isinstance(data, (str, bytes)) else dict(data or {}),  # psycopg may decode json itself
        study_id, depth, path,
    )


def _json_path(key: str | Sequence[str]) -> tuple[str, ...]:
    parts = (key,) if isinstance(key, str) else tuple(key)
    if not parts or not all(isinstance(p, str) and p and '"' not in p and "\\" not in p for p in parts):
        raise InvalidRequest(
            f"where keys are field names (or tuples of them for nested fields) without quotes "
            f"or backslashes; got {key!r:.60}"
        )
    return parts


def _where_clause(dialect: str, key: str | Sequence[str], value: Any) -> sa.ColumnElement[bool]:
    """``data[key] == value``, type-exact, with each database's JSON functions."""
    parts = _json_path(key)
    col = _events.c.data
    if isinstance(value, bool):
        kind = "bool"
    elif isinstance(value, (int, float)):
        kind = "number"
        value = float(value)
    elif isinstance(value, str):
        kind = "str"
    elif value is None:
        kind = "null"
    else:
        raise InvalidRequest(
            f"where values are strings, numbers, booleans or None; got {type(value).__name__} for {key!r}"
        )
    if dialect == "postgresql":
        node = col[parts] if len(parts) > 1 else col[parts[0]]  # -> / #> on the json column
        text = node.as_string()  # ->> / #>>
        jtype = sa.func.json_typeof(node)
        if kind == "str":
            return sa.and_(jtype == "string", text == value)
        if kind == "bool":
            return sa.and_(jtype == "boolean", text == ("true" if value else "false"))
        if kind == "null":
            return jtype == "null"
        # Cast only numbers: PostgreSQL would abort the query on a non-numeric text.
        num = sa.case((jtype == "number", sa.cast(text, sa.Double)), else_=None)
        return num == float(value)  # already a float: float() types the comparison for mypy
    path = "$" + "".join(f'."{p}"' for p in parts)
    extracted = sa.func.json_extract(col, path)
    if dialect == "sqlite":
        jtype = sa.func.json_type(col, path)
        if kind == "str":
            return sa.and_(jtype == "text", extracted == value)
        if kind == "bool":
            return jtype == ("true" if value else "false")
        if kind == "null":
            return jtype == "null"
        return sa.and_(jtype.in_(["integer", "real"]), extracted == value)
    # MySQL / MariaDB
    jtype = sa.func.json_type(extracted)
    if kind == "str":
        # Binary comparison: the default collation would match "Answer" to "answer".
        unq = sa.cast(sa.func.json_unquote(extracted), sa.LargeBinary)
        return sa.and_(jtype == "STRING", unq == sa.cast(sa.literal(value), sa.LargeBinary))
    if kind == "bool":
        return sa.and_(jtype == "BOOLEAN", sa.func.json_unquote(extracted) == ("true" if value else "false"))
    if kind == "null":
        return jtype == "NULL"
    num = sa.case((jtype.in_(["INTEGER", "DOUBLE", "UNSIGNED INTEGER", "DECIMAL"]), extracted + 0.0), else_=None)
    return num == float(value)


def query(
    storage: Storage | str,
    *,
    correlation_id: str | None = None,
    event_type: str | Sequence[str] | None = None,
    trial: Any = None,
    since: float | None = None,
    until: float | None = None,
    where: Mapping[str | tuple[str, ...], Any] | None = None,
    data_filter: Callable[[dict[str, Any]], bool] | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[Event]:
    """Events matching every given condition, oldest first (``newest_first`` reverses).

    ``where`` compares data fields for equality in SQL (``{"model": "gpt-4o-mini"}``;
    a tuple key reaches into nested dicts); ``data_filter`` is a Python predicate on
    the data, applied after; ``since``/``until`` bound ``created_at`` (epoch seconds).

    Example:
        >>> events.query(st, event_type="llm.call", where={"status": 429}, limit=10)  # doctest: +SKIP
    """
    from studyhall.storage import connect

    st = connect(storage)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidRequest(f"limit must be a non-negative integer; got {limit!r}")
    conds: list[sa.ColumnElement[bool]] = []
    if correlation_id is not None:
        conds.append(_events.c.correlation_id == correlation_id)
    if event_type is not None:
        types_ = [event_type] if isinstance(event_type, str) else list(event_type)
        conds.append(_events.c.event_type.in_(types_))
    if trial is not None:
        conds.append(_events.c.trial_id == _trial_ids(st, trial)[1])
    if since is not None:
        conds.append(_events.c.created_at >= float(since))
    if until is not None:
        conds.append(_events.c.created_at <= float(until))
    for key, value in (where or {}).items():
        conds.append(_where_clause(st.dialect, key, value))
    order = _events.c.id.desc() if newest_first else _events.c.id
    stmt = sa.select(*_COLUMNS).where(*conds).order_by(order)
    if limit is not None and data_filter is None:
        stmt = stmt.limit(limit)

    def read(conn: sa.Connection) -> list[Event]:
        out: list[Event] = []
        if limit == 0:
            return out
        for row in conn.execute(stmt):
            ev = _to_event(row)
            if data_filter is not None and not data_filter(ev.data):
                continue
            out.append(ev)
            if limit is not None and len(out) >= limit:
                break
        return out

    return st.transaction(read)


def get(storage: Storage | str, event_id: int | str) -> Event:
    """One event by id; InvalidRequest if there is none."""
    from studyhall.storage import connect

    st = connect(storage)
    target = _resolve_local(event_id) if isinstance(event_id, str) else event_id

    def read(conn: sa.Connection) -> Any:
        return conn.execute(sa.select(*_COLUMNS).where(_events.c.id == target)).first()

    row = st.transaction(read)
    if row is None:
        raise InvalidRequest(f"there is no event with id {event_id!r}")
    return _to_event(row)


def trace_tree(storage: Storage | str, correlation_id: str) -> list[TraceNode]:
    """The events of one trace as trees: its roots, each with its ``children``, in order.

    One query ordered by path; an event whose parent is not in the trace is a root.
    """
    from studyhall.storage import connect

    st = connect(storage)
    def read(conn: sa.Connection) -> Sequence[sa.Row[Any]]:
        stmt = sa.select(*_COLUMNS).where(_events.c.correlation_id == correlation_id).order_by(_events.c.path)
        return conn.execute(stmt).all()

    roots: list[TraceNode] = []
    nodes: dict[int, TraceNode] = {}
    for row in st.transaction(read):
        # ordered by path: a parent always comes before its children
        event = _to_event(row)
        node = nodes[event.id] = TraceNode(event, [])
        parent = nodes.get(event.parent_id) if event.parent_id is not None else None
        (parent.children if parent is not None else roots).append(node)
    return roots
