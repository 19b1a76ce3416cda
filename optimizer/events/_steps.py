"""The last steps of each running trial, kept in memory for its ``trace`` user_attr.

``trace.step`` (here, or in a pool worker whose message the parent handles)
appends to the trial's ring; ``Study.tell`` takes the ring of a failed trial as
its ``trace``. Bounded: at most ``TRIAL_STEPS`` steps for at most 4,096 trials.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

TRIAL_STEPS = 20  # the last steps kept per trial for its ``trace`` user_attr
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
