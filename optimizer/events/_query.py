"""Reading events back: ``query`` (conditions on any field and on the data), ``get``, ``trace_tree``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from studyhall.optimizer.events import _channel
from studyhall.optimizer.events._record import trial_ids
from studyhall.storage import InvalidRequest, Storage, connect
from studyhall.storage._events import read_event, read_events, read_trace


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
    st = connect(storage)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidRequest(f"limit must be a non-negative integer; got {limit!r}")
    rows = read_events(
        st,
        correlation_id=correlation_id,
        event_types=None if event_type is None else [event_type] if isinstance(event_type, str) else list(event_type),
        trial_id=None if trial is None else trial_ids(st, trial)[1],
        since=since,
        until=until,
        where=where,
        keep=data_filter,
        limit=limit,
        newest_first=newest_first,
    )
    return [Event(*row) for row in rows]


def get(storage: Storage | str, event_id: int | str) -> Event:
    """One event by id; InvalidRequest if there is none."""
    st = connect(storage)
    target = _channel.resolve_local(event_id) if isinstance(event_id, str) else event_id
    row = read_event(st, target)
    if row is None:
        raise InvalidRequest(f"there is no event with id {event_id!r}")
    return Event(*row)


def trace_tree(storage: Storage | str, correlation_id: str) -> list[TraceNode]:
    """The events of one trace as trees: its roots, each with its ``children``, in order.

    One query ordered by path; an event whose parent is not in the trace is a root.
    """
    roots: list[TraceNode] = []
    nodes: dict[int, TraceNode] = {}
    for row in read_trace(connect(storage), correlation_id):
        # ordered by path: a parent always comes before its children
        event = Event(*row)
        node = nodes[event.id] = TraceNode(event, [])
        parent = nodes.get(event.parent_id) if event.parent_id is not None else None
        (parent.children if parent is not None else roots).append(node)
    return roots
