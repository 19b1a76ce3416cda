"""Writing events: ``record`` and ``finish`` here, and the events pool workers send up their channel.

::

    record(storage, type, data, parent_id=, trial=) ── validate ──> storage/_events.write_event ──> id
    record(None, ...) in a pool worker ── _channel.send ──> parent: handle_worker_message ──> write_event
    finish(storage, id, data) ──> merge_event_data     (a span's duration and outcome, known at its end)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from studyhall.optimizer import _optuna
from studyhall.optimizer.events import _channel
from studyhall.optimizer.events._steps import note_step
from studyhall.optimizer.events._types import json_ready, validate
from studyhall.storage import InvalidRequest, Storage, StudyhallError, connect
from studyhall.storage._events import NewEvent, Placed, merge_event_data, write_event
from studyhall.storage._trials import study_of_trial

log = logging.getLogger("studyhall.optimizer.events")

# Trial ids never move between studies: cache forever, per database (each numbers its trials
# from 1, and one process may write to several).
_study_of_trial: dict[tuple[str, int], int] = {}


def trial_ids(st: Storage, trial: Any) -> tuple[int | None, int | None]:
    """(study_id, trial_id) of a TrialHandle, FrozenTrial, optuna Trial or optuna trial id (None: none)."""
    if trial is None:
        return None, None
    trial_id = _optuna.trial_id_of(trial)
    if trial_id is None:
        raise InvalidRequest(
            f"trial= takes a TrialHandle, a FrozenTrial, an optuna Trial or an optuna trial id; got {trial!r:.80}"
        )
    study_id = _optuna.study_id_of(trial) or _study_of_trial.get((st.url, trial_id))
    if study_id is None:
        study_id = study_of_trial(st, trial_id)
        if study_id is None:
            raise InvalidRequest(f"there is no trial with id {trial_id} in {st!r}")
    _study_of_trial[st.url, trial_id] = study_id
    return study_id, trial_id


def check_correlation(correlation_id: Any) -> str | None:
    """``correlation_id`` if it is None or a string of 1-64 characters, else InvalidRequest."""
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
        channel = _channel.worker_channel()
        if channel is None:
            raise InvalidRequest(f"record({event_type!r}) needs a storage (a Storage or URL) outside a pool worker")
        return _channel.send(
            channel,
            "record",
            event_type=event_type,
            data=validate(event_type, data),
            correlation_id=check_correlation(correlation_id),
            parent=parent_id,
            trial_id=_optuna.trial_id_of(trial),
            created_at=time.time(),
        )
    return record_row(storage, event_type, data, correlation_id, parent_id, trial).id


def record_row(
    storage: Storage | str,
    event_type: str,
    data: Any,
    correlation_id: str | None,
    parent_id: int | str | None,
    trial: Any,
    parent: Placed | None = None,
) -> Placed:
    """:func:`record` to a storage, returning where the event sits (``parent``: the parent's, if known)."""
    payload = validate(event_type, data)
    correlation_id = check_correlation(correlation_id)
    st = connect(storage)
    if isinstance(parent_id, str):
        parent_id = _channel.resolve_local(parent_id)
    if parent_id is not None and (not isinstance(parent_id, int) or isinstance(parent_id, bool)):
        raise InvalidRequest(f"parent_id must be an event id; got {parent_id!r:.60}")
    study_id, trial_id = trial_ids(st, trial)
    return write_event(
        st, NewEvent(event_type, payload, correlation_id, parent_id, study_id, trial_id, time.time(), parent)
    )


def finish(storage: Storage | str | None, event_id: int | str, data: Mapping[str, Any]) -> None:
    """Merge ``data`` into a recorded event (a span's duration and outcome, known at its end)."""
    update = json_ready("the data of finish()", dict(data))
    if storage is None:
        channel = _channel.worker_channel()
        if channel is None:
            raise InvalidRequest("finish() needs a storage (a Storage or URL) outside a pool worker")
        channel.send({_channel.MESSAGE_KEY: "event", "op": "finish", "local_id": event_id, "data": update})
        return
    target = _channel.resolve_local(event_id) if isinstance(event_id, str) else event_id
    merge_event_data(connect(storage), target, update)


# ---- the parent's side of a pool worker's events -------------------------------------------


def handle_worker_message(
    storage: Storage, payload: Any, study_id: int | None = None, trial_id: int | None = None
) -> bool:
    """Write an event a pool worker sent; False when ``payload`` is not an event message.

    Give it to ``pool.submit(..., on_send=...)`` (``optimize`` does) with the trial the
    task runs; the worker's steps also feed that trial's ``trace`` (see ``trial_steps``).
    A message that cannot be written is logged and dropped: one bad event must not
    fail the trial that sent it.
    """
    if not isinstance(payload, Mapping) or payload.get(_channel.MESSAGE_KEY) != "event":
        return False
    op, local_id = payload.get("op"), str(payload.get("local_id"))
    tid = trial_id if trial_id is not None else payload.get("trial_id")
    try:
        if op == "record":
            if payload.get("step") is not None and tid is not None:
                note_step(tid, payload["step"])
            _record_remote(storage, payload, local_id, study_id, tid)
        elif op == "finish":
            _finish_remote(storage, payload)
        elif op == "step":  # a step kept for the trial's trace only, with nowhere to store it
            if tid is not None and payload.get("step") is not None:
                note_step(tid, payload["step"])
        else:
            log.warning("ignoring an event message with unknown op %r", op)
    except StudyhallError as exc:
        log.warning("dropped an event sent by a worker (%s: %s)", type(exc).__name__, exc)
    return True


def worker_sink(storage: Storage, trial: Any) -> Callable[[Any], None]:
    """An ``on_send`` for the pool task running ``trial`` (an optuna Trial): its events land here."""
    study_id = _optuna.study_id_of(trial)
    trial_id = _optuna.trial_id_of(trial)

    def on_send(payload: Any) -> None:
        handle_worker_message(storage, payload, study_id, trial_id)

    return on_send


def _record_remote(
    st: Storage, payload: Mapping[str, Any], local_id: str, study_id: int | None, trial_id: int | None
) -> None:
    parent = payload.get("parent")
    parent_row: Placed | None = None
    if isinstance(parent, str):
        parent_row = _channel.placed(parent)
        if parent_row is None:
            raise InvalidRequest(f"the parent {parent!r} of a worker's event was never written")
        parent = parent_row.id
    if study_id is None and trial_id is not None:
        study_id = trial_ids(st, trial_id)[0]
    ev = NewEvent(
        str(payload.get("event_type")),
        dict(payload.get("data") or {}),
        payload.get("correlation_id"),
        parent,
        study_id,
        trial_id,
        float(payload.get("created_at") or time.time()),
        parent_row,
    )
    _channel.remember(local_id, write_event(st, ev))


def _finish_remote(st: Storage, payload: Mapping[str, Any]) -> None:
    raw = payload.get("local_id")
    if isinstance(raw, str):
        row = _channel.placed(raw)
        event_id = None if row is None else row.id
    elif isinstance(raw, int) and not isinstance(raw, bool):
        event_id = raw
    else:
        raise InvalidRequest(f"a worker's finish() names no event id; got {raw!r:.60}")
    if event_id is not None:
        merge_event_data(st, event_id, json_ready("a worker's finish()", dict(payload.get("data") or {})))
