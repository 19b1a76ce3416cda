"""What ``Study.tell`` decides before it writes: the state, the values and the distributions.

::

    tell(value | values | scores, metrics, state, error, user_attrs)
      ──> check_tell: parse the state; summarise scores and metrics (Summary, user_attrs,
          rows); the values (a COMPLETE trial's, checked against the directions; a
          PRUNED trial's last intermediate value) ──> Told       (InvalidRequest: nothing written)
      ──> Study.tell writes it in one transaction ──> frozen_after(running, told)

Pure functions of their arguments: nothing here reads or writes the storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer import _optuna
from studyhall.optimizer.study._summary import Summary, as_array, summarize_array, summary_attrs
from studyhall.storage import InvalidRequest
from studyhall.storage._limits import attr_json

STATES = {"complete": TrialState.COMPLETE, "fail": TrialState.FAIL, "pruned": TrialState.PRUNED}
MAX_ERROR_LEN = 2000
MAX_METRIC_NAME = 128  # studyhall_trial_metrics.name


@dataclass
class Told:
    """A checked tell: the final state, the values, the user_attrs and one row per distribution."""

    state: TrialState
    values: list[float] | None
    user_attrs: dict[str, Any]
    rows: list[tuple[str, dict[str, Any], np.ndarray | None]]  # (metric name, Summary.as_dict(), samples)


def parse_state(state: str | TrialState, *, told: bool = True) -> TrialState:
    """A trial state from its name; ``told`` allows only the final ones (complete, fail, pruned)."""
    if isinstance(state, str):
        key = state.lower()
        if key in STATES:
            return STATES[key]
        if not told and key.upper() in TrialState.__members__:
            return TrialState[key.upper()]
    elif isinstance(state, TrialState) and (not told or state in STATES.values()):
        return state
    allowed = "'complete', 'fail' or 'pruned'" if told else "'complete', 'fail', 'pruned', 'running' or 'waiting'"
    raise InvalidRequest(f"unknown trial state {state!r}; use {allowed}")


def check_tell(
    running: FrozenTrial,
    directions: Sequence[str],
    study_name: str,
    *,
    value: float | Sequence[float] | None,
    values: Sequence[float] | None,
    scores: Sequence[float] | np.ndarray | None,
    metrics: Mapping[str, Sequence[float]] | None,
    state: str | TrialState | None,
    error: str | None,
    user_attrs: Mapping[str, Any] | None,
) -> Told:
    """Everything a tell of ``running`` will write, or InvalidRequest saying what is wrong."""
    if user_attrs is not None and not isinstance(user_attrs, Mapping):
        raise InvalidRequest(f"user_attrs must be a dict of name -> JSON value; got {type(user_attrs).__name__}")
    told = Told(parse_state(state) if state is not None else TrialState.COMPLETE, None, dict(user_attrs or {}), [])
    for key, val in told.user_attrs.items():
        attr_json("user attribute", key, val)  # JSON, key and size: refused here, before anything is written
    score = _summarise(told, "score", scores, "scores") if scores is not None else None
    told.values = _values(value, values, scores, told.state, score, directions, study_name)
    if told.state == TrialState.PRUNED and running.last_step is not None:
        last = running.intermediate_values[running.last_step]
        told.values = [last] if math.isfinite(last) and len(directions) == 1 else None  # as Optuna does
    if metrics is not None and not isinstance(metrics, Mapping):
        raise InvalidRequest(f"metrics must be a dict of name -> samples; got {type(metrics).__name__}")
    for name, samples in (metrics or {}).items():
        if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME or "\x00" in name:
            raise InvalidRequest(f"metric names must be strings of 1-{MAX_METRIC_NAME} characters; got {name!r:.60}")
        _summarise(told, name, samples, f"metric {name!r}")
    if error is not None:
        told.user_attrs["error"] = str(error)[:MAX_ERROR_LEN]
    return told


def _summarise(told: Told, name: str, given: Any, what: str) -> Summary | None:
    # A distribution is kept as a row and as flat user_attrs (name.p50, ...); no samples, no row.
    samples = as_array(given, what, finite=False)
    if not samples.size:
        return None
    s = summarize_array(samples, what=what)  # finiteness checked there: 0/1 samples need no pass for it
    told.user_attrs.update(summary_attrs(name, s))
    told.rows.append((name, s.as_dict(), samples))
    return s


def _values(
    value: float | Sequence[float] | None,
    values: Sequence[float] | None,
    scores: Sequence[float] | np.ndarray | None,
    state: TrialState,
    score: Summary | None,
    directions: Sequence[str],
    study_name: str,
) -> list[float] | None:
    n_obj = len(directions)
    if value is not None and values is not None:
        raise InvalidRequest("pass value= or values=, not both")
    raw: Any = values if values is not None else value
    if state != TrialState.COMPLETE:
        if raw is not None:
            raise InvalidRequest(f"a {state.name} trial takes no value; drop value=/values=")
        return None
    if raw is None and scores is not None:
        if n_obj != 1:
            raise InvalidRequest(
                f"scores= sets the value of a single-objective study; this one has {n_obj} "
                "objectives, so pass values=[...] (and keep scores as a metric)"
            )
        if score is None:
            raise InvalidRequest("scores is empty; pass at least one score, or a value")
        raw = score.mean
    if raw is None:
        raise InvalidRequest("tell needs a value, values=[...] or scores=[...] for a completed trial")
    seq = list(raw) if isinstance(raw, (Sequence, np.ndarray)) and not isinstance(raw, str) else [raw]
    if len(seq) != n_obj:
        raise InvalidRequest(
            f"study {study_name!r} has {n_obj} objective(s) ({', '.join(directions)}); got {len(seq)} value(s)"
        )
    out = []
    for v in seq:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            raise InvalidRequest(f"values must be numbers; got {v!r:.60}")
        if not math.isfinite(float(v)):
            raise InvalidRequest(f"value {v} is not finite; tell state='fail' with an error instead")
        out.append(float(v))
    return out


def frozen_after(running: FrozenTrial, told: Told, started_at: datetime | None, done_at: datetime) -> FrozenTrial:
    """The trial as the tell left it in the storage (without reading it back)."""
    return FrozenTrial(
        number=running.number,
        state=told.state,
        value=None,
        values=told.values,
        datetime_start=started_at or running.datetime_start,
        datetime_complete=done_at,
        params=running.params,
        distributions=running.distributions,
        user_attrs={**running.user_attrs, **told.user_attrs},
        system_attrs=running.system_attrs,
        intermediate_values=running.intermediate_values,
        trial_id=_optuna.trial_id(running),
    )
