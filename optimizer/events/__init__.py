"""Structured events with causal trees: ``record``, ``query``, ``trace_tree``.

Every event is a row of ``studyhall_events`` (``storage/_events.py``) with a
materialised path of zero-padded ids (``0000000001.0000000007``, like LangSmith's
dotted_order), so a whole trace is one query ordered by path and a subtree is a
prefix::

    record(storage, "retrieve", {...})            -> 1   path 0000000001
    record(storage, "rank", {...}, parent_id=1)   -> 7   path 0000000001.0000000007
    trace_tree(storage, correlation_id)           -> [TraceNode(event 1, children=[7])]

In a pool worker (``bridge.worker_channel()`` is not None) an event recorded
without a storage is sent to the parent instead, which writes it in
:func:`handle_worker_message`; ids there are opaque local strings that the parent
maps to the rows it wrote, so children still nest under their parents::

    worker: record(None, ...) ── channel.send({"studyhall": "event", ...}) ──> parent:
            handle_worker_message(storage, payload, study_id, trial_id) ──> row

The package: ``_types.py`` (registered event types and ``validate``), ``_record.py``
(``record``, ``finish``, the parent's side of workers' events), ``_channel.py`` (the
worker's side), ``_steps.py`` (each running trial's last steps) and ``_query.py``
(``query``, ``get``, ``trace_tree``).

Example:
    >>> root = events.record(st, "run", {"q": "2+2?"})  # doctest: +SKIP
    >>> events.record(st, "answer", {"text": "4"}, parent_id=root)  # doctest: +SKIP
    >>> events.query(st, event_type="answer", where={"text": "4"})  # doctest: +SKIP
"""

from __future__ import annotations

from studyhall.optimizer.events._channel import MESSAGE_KEY, worker_channel
from studyhall.optimizer.events._query import Event, TraceNode, get, query, trace_tree
from studyhall.optimizer.events._record import finish, handle_worker_message, record, worker_sink
from studyhall.optimizer.events._steps import TRIAL_STEPS, note_step, trial_buffer, trial_steps
from studyhall.optimizer.events._types import register, registered, unregister, validate

__all__ = [
    "Event",
    "MESSAGE_KEY",
    "TRIAL_STEPS",
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
