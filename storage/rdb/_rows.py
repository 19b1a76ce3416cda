"""Rows of Optuna's tables <-> Optuna's objects: stored values, timestamps, whole FrozenTrials.

Optuna 5 stores trial times as naive UTC and hands them out as naive local time;
objective values as (value, FINITE | INF_POS | INF_NEG) and intermediate values with
NAN besides. Loading many trials is six queries in all (the trials, then each child
table once for all of them), whatever their number.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage._optuna import table

_UTC = dt.UTC


def to_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A naive local time as the naive UTC time Optuna stores."""
    return None if value is None else value.astimezone(_UTC).replace(tzinfo=None)


def to_local(value: dt.datetime | None) -> dt.datetime | None:
    """A stored naive UTC time as the naive local time Optuna hands out."""
    return None if value is None else value.replace(tzinfo=_UTC).astimezone().replace(tzinfo=None)


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


def new_frozen(trial_id: int, number: int, state: TrialState, start: dt.datetime | None, complete: dt.datetime | None) -> FrozenTrial:
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


def load_trials(conn: sa.Connection, where: Any, parse: Distributions) -> list[FrozenTrial]:
    """Every trial matching ``where`` (a clause on the trials table), whole, in trial-id order."""
    t = table("TrialModel")
    rows = conn.execute(
        sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
        .where(where)
        .order_by(t.c.trial_id)
    ).all()
    if not rows:
        return []
    trials = {r[0]: new_frozen(r[0], r[1], r[2], to_local(r[3]), to_local(r[4])) for r in rows}
    ids = sa.select(t.c.trial_id).where(where).scalar_subquery() if len(rows) > 1 else rows[0][0]

    def children(model: str, *cols: str, order: str | None = None) -> Iterable[Any]:
        c = table(model).c
        q = sa.select(c.trial_id, *(c[name] for name in cols))
        q = q.where(c.trial_id.in_(ids)) if len(rows) > 1 else q.where(c.trial_id == ids)
        if order is not None:
            q = q.order_by(c[order])
        return conn.execute(q)

    for trial_id, name, value, text in children(
        "TrialParamModel", "param_name", "param_value", "distribution_json", order="param_id"
    ):
        dist = parse(text)
        frozen = trials[trial_id]
        frozen.distributions[name] = dist
        frozen.params[name] = dist.to_external_repr(value)
    values: dict[int, dict[int, float]] = {}
    for trial_id, objective, value, kind in children("TrialValueModel", "objective", "value", "value_type"):
        values.setdefault(trial_id, {})[objective] = value_from(value, kind)
    for trial_id, by_objective in values.items():
        trials[trial_id].values = [by_objective[k] for k in sorted(by_objective)]
    for trial_id, step, value, kind in children(
        "TrialIntermediateValueModel", "step", "intermediate_value", "intermediate_value_type"
    ):
        trials[trial_id].intermediate_values[step] = intermediate_from(value, kind)
    for trial_id, key, text in children("TrialUserAttributeModel", "key", "value_json"):
        trials[trial_id].user_attrs[key] = json.loads(text)
    for trial_id, key, text in children("TrialSystemAttributeModel", "key", "value_json"):
        trials[trial_id].system_attrs[key] = json.loads(text)
    return list(trials.values())
