"""Rows of Optuna's tables <-> Optuna's objects: stored values, timestamps, whole FrozenTrials.

Optuna 5 stores trial times as naive UTC and hands them out as naive local time;
objective values as (value, FINITE | INF_POS | INF_NEG) and intermediate values with
NAN besides. Loading many trials is six queries in all (the trials, then each child
table once for all of them), whatever their number.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import gc
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage._optuna import table

_UTC = dt.UTC
_MAX_IDS = 500  # ids bound in one query (SQLite allows a few thousand variables at least)


def to_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A naive local time as the naive UTC time Optuna stores."""
    return None if value is None else value.astimezone(_UTC).replace(tzinfo=None)


def to_local(value: dt.datetime | None) -> dt.datetime | None:
    """A stored naive UTC time as the naive local time Optuna hands out."""
    if value is None or _LOCAL_IS_UTC:
        return value
    return value.replace(tzinfo=_UTC).astimezone().replace(tzinfo=None)


# Servers often run in UTC: then loading 3,000 trials needs no 6,000 time-zone conversions.
_LOCAL_IS_UTC = time.timezone == 0 and time.altzone == 0 and not time.daylight


def value_repr(value: float) -> tuple[float | None, str]:
    """An objective value as stored: (value or None, its kind)."""
    if value == math.inf:
        return None, "INF_POS"
    if value == -math.inf:
        return None, "INF_NEG"
    return value, "FINITE"


def value_from(stored: float | None, kind: Any) -> float:
    """The objective value stored as ``(stored, kind)``."""
    name = getattr(kind, "name", kind)
    if name == "INF_POS":
        return math.inf
    if name == "INF_NEG":
        return -math.inf
    assert stored is not None
    return float(stored)


def intermediate_repr(value: float) -> tuple[float | None, str]:
    """An intermediate value as stored (NaN allowed)."""
    if math.isnan(value):
        return None, "NAN"
    return value_repr(value)


def intermediate_from(stored: float | None, kind: Any) -> float:
    """The intermediate value stored as ``(stored, kind)``."""
    if getattr(kind, "name", kind) == "NAN":
        return math.nan
    return value_from(stored, kind)


class Distributions:
    """``distribution_json`` -> distribution, parsed once per distinct text (a study repeats them)."""

    def __init__(self) -> None:
        self._parsed: dict[str, distributions.BaseDistribution] = {}

    def __call__(self, text: str) -> distributions.BaseDistribution:
        dist = self._parsed.get(text)
        if dist is None:
            dist = self._parsed[text] = distributions.json_to_distribution(text)
        return dist


def new_frozen(
    trial_id: int, number: int, state: TrialState, start: dt.datetime | None, complete: dt.datetime | None
) -> FrozenTrial:
    """An empty FrozenTrial (no params, values or attrs) with these facts."""
    return FrozenTrial(
        number=number,
        state=state,
        value=None,
        values=None,
        datetime_start=start,
        datetime_complete=complete,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )


def clone(frozen: FrozenTrial) -> FrozenTrial:
    """A copy whose dicts can change without touching ``frozen`` (which callers may hold)."""
    c = copy.copy(frozen)
    c.params = dict(frozen.params)
    c.distributions = dict(frozen.distributions)
    c.user_attrs = dict(frozen.user_attrs)
    c.system_attrs = dict(frozen.system_attrs)
    c.intermediate_values = dict(frozen.intermediate_values)
    if frozen.values is not None:
        c.values = list(frozen.values)
    return c


def _column(col: Any) -> Any:
    # An Enum column's names as plain strings: converting each to its member and reading
    # its .name back costs more than the rest of a value's load.
    return sa.type_coerce(col, sa.String).label(col.name) if isinstance(col.type, sa.Enum) else col


@functools.cache
def _loaders() -> dict[str, tuple[Any, ...]]:
    # Six prebuilt queries per mode: the trials, then each child table for all of them.
    t = table("TrialModel")
    children = (
        ("TrialParamModel", ("param_name", "param_value", "distribution_json"), "param_id"),
        ("TrialValueModel", ("objective", "value", "value_type"), None),
        ("TrialIntermediateValueModel", ("step", "intermediate_value", "intermediate_value_type"), None),
        # the kinds above are read as their names (plain strings, not Enum members): see _column
        ("TrialUserAttributeModel", ("key", "value_json"), None),
        ("TrialSystemAttributeModel", ("key", "value_json"), None),
    )
    by_study = t.c.study_id == sa.bindparam("sid")
    by_ids = t.c.trial_id.in_(sa.bindparam("ids", expanding=True))
    of_study = sa.select(t.c.trial_id).where(by_study).scalar_subquery()
    head = sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
    out: dict[str, tuple[Any, ...]] = {}
    for mode, where, trial_ids in (
        ("study", by_study, of_study),
        ("ids", by_ids, sa.bindparam("ids", expanding=True)),
    ):
        queries = [head.where(where).order_by(t.c.trial_id)]
        for model, cols, order in children:
            c = table(model).c
            q = sa.select(c.trial_id, *(_column(c[name]) for name in cols)).where(c.trial_id.in_(trial_ids))
            queries.append(q.order_by(c[order]) if order else q)
        out[mode] = tuple(queries)
    return out


def load_trials(
    conn: sa.Connection, parse: Distributions, *, study_id: int | None = None, ids: list[int] | None = None
) -> list[FrozenTrial]:
    """Whole trials, in trial-id order: every trial of ``study_id``, or those in ``ids``."""
    if ids is not None and len(ids) > _MAX_IDS:
        return [t for i in range(0, len(ids), _MAX_IDS) for t in load_trials(conn, parse, ids=ids[i : i + _MAX_IDS])]
    # Thousands of small objects at once: the cyclic collector would run over and over
    # on a growing heap (about half of a cold 3,000-trial load) and find nothing to free.
    with _collector_paused():
        return _load_trials(conn, parse, study_id, ids)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_trials(
    conn: sa.Connection, parse: Distributions, study_id: int | None, ids: list[int] | None
) -> list[FrozenTrial]:
    head, params_q, values_q, inter_q, user_q, system_q = _loaders()["study" if ids is None else "ids"]
    args = {"sid": study_id} if ids is None else {"ids": ids}
    rows = conn.execute(head, args).all()
    if not rows:
        return []
    trials = {r[0]: new_frozen(r[0], r[1], r[2], to_local(r[3]), to_local(r[4])) for r in rows}
    # Each query sees the database as of its own start (read committed): a trial committed
    # after the first one can show up in the later ones. It is skipped; the next refresh
    # reads it whole (its id is above the watermark).
    for trial_id, name, value, text in conn.execute(params_q, args).all():
        frozen = trials.get(trial_id)
        if frozen is not None:
            dist = parse(text)
            frozen.distributions[name] = dist
            frozen.params[name] = dist.to_external_repr(value)
    values: dict[int, dict[int, float]] = {}
    for trial_id, objective, value, kind in conn.execute(values_q, args).all():
        values.setdefault(trial_id, {})[objective] = value_from(value, kind)
    for trial_id, by_objective in values.items():
        if trial_id in trials:
            trials[trial_id].values = [by_objective[k] for k in sorted(by_objective)]
    for trial_id, step, value, kind in conn.execute(inter_q, args).all():
        if trial_id in trials:
            trials[trial_id].intermediate_values[step] = intermediate_from(value, kind)
    for query, attr in ((user_q, "user_attrs"), (system_q, "system_attrs")):
        rows = [r for r in conn.execute(query, args).all() if r[0] in trials]
        # One json.loads for all of them: a JSON array of the stored documents.
        decoded = json.loads("[" + ",".join(r[2] for r in rows) + "]") if rows else []
        for (trial_id, key, _), value in zip(rows, decoded):
            getattr(trials[trial_id], attr)[key] = value
    return list(trials.values())
