"""Events recorded in a pool worker travel to the parent, which writes them.

In a pool task (``bridge.worker_channel()`` is not None) an event recorded without
a storage is sent up the task's channel; the parent writes it
(``_record.handle_worker_message``). Its id in the worker is an opaque local
string; the parent maps each to the row it wrote, so children recorded in the
worker still nest under their parents::

    worker: record(None, ...) ── channel.send({"studyhall": "event", "op": "record", "local_id", ...})
    parent: handle_worker_message(storage, payload, study_id, trial_id) ──> row, remembered by local id
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections import OrderedDict
from typing import Any

from studyhall.storage import InvalidRequest
from studyhall.storage._events import Placed

MESSAGE_KEY = "studyhall"  # payloads with this key are studyhall's, not the task's own


def worker_channel() -> Any:
    """``bridge.worker_channel()``: the channel of the pool task running here, None outside one."""
    from studyhall.bridge import worker_channel as current  # the pool's modules load on first use

    return current()


_local_prefix = ""
_local_pid = -1
_local_counter = itertools.count(1)


def local_id() -> str:
    """A new id for an event recorded in this worker (unique across processes)."""
    global _local_prefix, _local_pid, _local_counter
    if _local_pid != os.getpid():  # a forked worker must not reuse its parent's ids
        _local_prefix, _local_pid, _local_counter = uuid.uuid4().hex[:16], os.getpid(), itertools.count(1)
    return f"{_local_prefix}-{next(_local_counter)}"


def send(channel: Any, op: str, **fields: Any) -> str:
    """Send one event message (``op``: record, finish, step) to the parent; returns its local id."""
    event_id = fields.pop("local_id", None) or local_id()
    channel.send({MESSAGE_KEY: "event", "op": op, "local_id": event_id, **fields})
    return event_id


# Parent side: worker-local id -> where the parent wrote that event, newest last.
_MAX_LOCAL = 200_000
_local_rows: OrderedDict[str, Placed] = OrderedDict()
_local_lock = threading.Lock()


def remember(event_id: str, placed: Placed) -> None:
    """Note where the event a worker called ``event_id`` was written (the oldest are forgotten)."""
    with _local_lock:
        _local_rows[event_id] = placed
        while len(_local_rows) > _MAX_LOCAL:
            _local_rows.popitem(last=False)


def placed(event_id: str) -> Placed | None:
    """Where the event a worker called ``event_id`` was written, if this process wrote it."""
    with _local_lock:
        return _local_rows.get(event_id)


def resolve_local(event_id: str) -> int:
    """The row id of a worker's event id; InvalidRequest if this process never wrote it."""
    row = placed(event_id)
    if row is None:
        raise InvalidRequest(f"unknown event id {event_id!r}; ids of a worker's events are valid in that trial only")
    return row.id
