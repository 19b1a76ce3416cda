"""Step-by-step traces: ``trace.step(name, data)`` and ``with trace.span(name):`` anywhere.

The current scope lives in a contextvar, so nesting follows the code's own
structure (threads need ``contextvars.copy_context()``)::

    scope (storage? trial? correlation id, last 20 steps)
      ├── step "Thought"               -> event trace.step
      └── span "Action"                -> event trace.span (duration, error at its end)
            └── step "Observation"     -> event trace.step, parent = the span

Where the events go: a scope opened with a storage writes them; inside a pool
task (no storage given) they are sent to the parent over the worker channel,
which writes them and keeps the trial's last steps; elsewhere they are only
remembered in memory. Either way the last 20 steps of a trial become its
``trace`` user_attr when it fails, and an exception leaving :func:`scope` carries
them as ``exc.trace``.

Example:
    >>> with trace.scope(st, trial=t):  # doctest: +SKIP
    ...     trace.step("Thought", {"plan": "look it up"})
    ...     with trace.span("Action", {"tool": "search"}):
    ...         trace.step("Observation", {"hits": 3})
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from studyhall.optimizer import _optuna, _otel, events
from studyhall.optimizer.events._channel import MESSAGE_KEY, send
from studyhall.optimizer.events._record import check_correlation, record_row, trial_ids
from studyhall.optimizer.events._steps import TRIAL_STEPS
from studyhall.storage import InvalidRequest, Storage, StudyhallError
from studyhall.storage._events import Placed

__all__ = ["Scope", "attach", "current", "last_steps", "scope", "span", "step", "summarize_value"]

log = logging.getLogger(__name__)

STEP = "trace.step"
SPAN = "trace.span"
EVENT_STR = 2000  # longest string kept in an event's data
_STEP_ATTRS, _SPAN_ATTRS = {"studyhall.kind": "step"}, {"studyhall.kind": "span"}  # OpenTelemetry spans' kinds
TRACE_STR = 200  # ... and in a ``trace`` user_attr entry


@dataclass
class Scope:
    """Where steps go: a storage or a worker channel (or neither), the trace and the parent."""

    storage: Storage | None = None
    channel: Any = None
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    parent: int | str | None = None
    trial_id: int | None = None
    steps: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TRIAL_STEPS))
    # where this trace's spans were written, by event id: their children skip a lookup
    rows: dict[int, Placed] = field(default_factory=dict, repr=False)

    def child(self, parent: int | str | None) -> Scope:
        """The same trace one level down (children of event ``parent``)."""
        return dataclasses.replace(self, parent=parent if parent is not None else self.parent)


_current: ContextVar[Scope | None] = ContextVar("studyhall_trace_scope", default=None)
_fallback: ContextVar[Scope | None] = ContextVar("studyhall_trace_fallback", default=None)
# Outside any scope, a pool task's steps share one trace, whichever thread records them.
_task_scopes: dict[int, Scope] = {}
_task_lock = threading.Lock()


def current() -> Scope:
    """The scope steps recorded here go to (a per-task or in-memory one outside any scope)."""
    s = _current.get()
    if s is not None:
        return s
    channel = events.worker_channel()
    if channel is None:
        fb = _fallback.get()
        if fb is None:
            fb = Scope()
            _fallback.set(fb)
        return fb
    with _task_lock:
        fb = _task_scopes.get(id(channel))
        if fb is None or fb.channel is not channel:  # each task has a channel of its own
            if len(_task_scopes) >= 64:
                _task_scopes.clear()
            fb = _task_scopes[id(channel)] = Scope(channel=channel)
        return fb


def last_steps(trial_id: int | None = None) -> list[dict[str, Any]]:
    """The last steps of a trial (``trial_id``), or of the current scope."""
    if trial_id is not None:
        return events.trial_steps(trial_id)
    return list(current().steps)


@contextlib.contextmanager
def scope(
    storage: Storage | str | None = None,
    *,
    trial: Any = None,
    correlation_id: str | None = None,
    parent_id: int | str | None = None,
) -> Iterator[Scope]:
    """A new trace for the block: steps written to ``storage`` (if any), tied to ``trial``.

    In a pool worker without a storage the steps go to the parent. An exception
    leaving the block gets ``.trace``, the last steps, unless it has one already.
    """
    from studyhall.storage import connect

    st = connect(storage) if storage is not None else None
    channel = None if st is not None else events.worker_channel()
    trial_id = None
    if trial is not None:
        trial_id = trial_ids(st, trial)[1] if st is not None else _optuna.trial_id_of(trial)
    if parent_id is not None and correlation_id is None and st is not None:
        correlation_id = events.get(st, parent_id).correlation_id  # children join their parent's trace
    new = Scope(
        storage=st,
        channel=channel,
        correlation_id=check_correlation(correlation_id) or uuid.uuid4().hex,
        parent=parent_id,
        trial_id=trial_id,
    )
    if trial_id is not None and channel is None:
        # In the process that tells the trial, its steps are the ones tell() reads.
        new.steps = events.trial_buffer(trial_id)
    token = _current.set(new)
    try:
        yield new
    except BaseException as exc:
        attach(exc, new.steps)
        raise
    finally:
        _current.reset(token)


def attach(exc: BaseException, steps: Any) -> None:
    """Give ``exc`` a ``trace`` attribute (the steps so far) unless it carries one."""
    if getattr(exc, "trace", None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            exc.trace = list(steps)  # type: ignore[attr-defined]


def step(name: str, data: Any = None) -> int | str | None:
    """Record one step (a Thought, an Action, an Observation...) in the current trace.

    Returns the event's id, or None when the trace is kept in memory only.
    """
    s = current()
    event_id = _emit(s, STEP, name, data, kind="step")
    _otel.step(name, _STEP_ATTRS, data)
    return event_id


@contextlib.contextmanager
def span(name: str, data: Any = None) -> Iterator[int | str | None]:
    """A step that encloses others: the steps inside become its children; its duration is kept."""
    s = current()
    event_id = _emit(s, SPAN, name, data, kind="span")
    token = _current.set(s.child(event_id))
    start = time.perf_counter()
    error: str | None = None
    try:
        with _otel.span(name, _SPAN_ATTRS, data):
            yield event_id
    except BaseException as exc:
        error = describe(exc)
        s.steps.append({"name": name, "error": error[:TRACE_STR]})
        raise
    finally:
        _current.reset(token)
        end: dict[str, Any] = {"duration_s": round(time.perf_counter() - start, 6)}
        if error is not None:
            end["error"] = error[:EVENT_STR]
        close(s, event_id, end)


def describe(exc: BaseException) -> str:
    """``"Type: message"``, the way a failed trial's ``error`` reads."""
    return f"{type(exc).__name__}: {exc}"


def _emit(s: Scope, event_type: str, name: str, data: Any, *, kind: str, **extra: Any) -> int | str | None:
    """Remember a step in ``s`` and record it wherever ``s`` sends events."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"a step name is a non-empty string; got {name!r:.60}")
    entry = {"name": name, "data": summarize_value(data, TRACE_STR)}
    if kind != "step":
        entry["kind"] = kind
    s.steps.append(entry)
    if s.storage is None and s.channel is None:
        return None
    payload = {"name": name, "data": summarize_value(data, EVENT_STR, items=100), **extra}
    try:
        if s.storage is not None:
            parent_row = s.rows.get(s.parent) if isinstance(s.parent, int) else None
            row = record_row(s.storage, event_type, payload, s.correlation_id, s.parent, s.trial_id, parent_row)
            if kind != "step":
                s.rows[row.id] = row
            return row.id
        return send(
            s.channel,
            "record",
            event_type=event_type,
            data=payload,
            correlation_id=s.correlation_id,
            parent=s.parent,
            trial_id=s.trial_id,
            created_at=time.time(),
            step=entry,
        )
    except StudyhallError as exc:  # tracing must never break the traced code
        log.warning("could not record trace %s %r (%s: %s)", kind, name, type(exc).__name__, exc)
        return None


def close(s: Scope, event_id: int | str | None, data: Mapping[str, Any]) -> None:
    """Add what is known at the end of a span (duration, error) to its event."""
    if event_id is None:
        return
    try:
        if s.storage is not None:
            events.finish(s.storage, event_id, data)
        elif s.channel is not None:
            s.channel.send({MESSAGE_KEY: "event", "op": "finish", "local_id": event_id, "data": dict(data)})
    except StudyhallError as exc:
        log.warning("could not close trace span %r (%s: %s)", event_id, type(exc).__name__, exc)


def summarize_value(value: Any, max_str: int = TRACE_STR, items: int = 20, depth: int = 4) -> Any:
    """``value`` as small JSON-ready data: long strings cut, long lists shortened, objects repr'd."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= max_str else value[:max_str] + f"... ({len(value)} chars)"
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return summarize_value(value.item(), max_str, items, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if depth <= 0:
        return summarize_value(repr(value), max_str)
    if isinstance(value, Mapping):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= items:
                out["..."] = f"{len(value) - items} more"
                break
            out[str(k)] = summarize_value(v, max_str, items, depth - 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset, deque)) or (hasattr(value, "tolist") and hasattr(value, "ndim")):
        seq = list(value.tolist() if hasattr(value, "tolist") else value)
        out_list = [summarize_value(v, max_str, items, depth - 1) for v in seq[:items]]
        if len(seq) > items:
            out_list.append(f"... {len(seq) - items} more")
        return out_list
    if isinstance(value, BaseException):
        return summarize_value(describe(value), max_str)
    return summarize_value(repr(value), max_str)
