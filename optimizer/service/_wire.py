"""The service's JSON, seen from the client: spaces out, trials in, bodies strictly encoded."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer.study._space import Categorical, Float, Int, Space, distribution_spec
from studyhall.storage import InvalidRequest


def param_to_json(p: Any) -> dict[str, Any]:
    """A Float/Int/Categorical (or Optuna distribution) as the service's JSON."""
    if isinstance(p, (Float, Int, Categorical)):
        p = p.distribution()
    if isinstance(p, od.BaseDistribution):
        return distribution_spec(p)
    raise InvalidRequest(f"a space value must be Float(low, high), Int(low, high) or Categorical([...]); got {p!r:.60}")


def space_to_json(space: Space | None) -> dict[str, Any] | None:
    """A search space as the service's JSON (None stays None: the study's last space)."""
    if space is None:
        return None
    if not isinstance(space, Mapping):
        raise InvalidRequest(f"a space is a dict of name -> Float/Int/Categorical; got {type(space).__name__}")
    return {str(name): param_to_json(p) for name, p in space.items()}


def _distribution(d: Mapping[str, Any]) -> od.BaseDistribution:
    if d["type"] == "float":
        return od.FloatDistribution(d["low"], d["high"], log=d["log"], step=d["step"])
    if d["type"] == "int":
        return od.IntDistribution(d["low"], d["high"], log=d["log"], step=d["step"])
    return od.CategoricalDistribution(d["choices"])


def _plain(v: Any) -> Any:
    # numpy arrays and scalars, tuples, ranges: what callers pass in-process.
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, range)):
        return [_plain(x) for x in v]
    return v


def encode(body: Any) -> bytes:
    """``body`` as strict JSON bytes; NaN, infinities and non-JSON values are an InvalidRequest."""
    try:
        return json.dumps(_plain(body), allow_nan=False).encode()
    except ValueError as exc:
        raise InvalidRequest(
            "the request holds a NaN or infinite number; send finite values (tell state='fail' for a failed trial)"
        ) from exc
    except TypeError as exc:
        raise InvalidRequest(f"the request holds something JSON cannot carry: {exc}") from exc


def frozen_trial(d: Mapping[str, Any]) -> FrozenTrial:
    """A TrialOut JSON object as an Optuna FrozenTrial (trial_id is not exposed: -1)."""

    def when(s: str | None) -> datetime.datetime | None:
        return None if s is None else datetime.datetime.fromisoformat(s)

    values = d.get("values")
    return FrozenTrial(
        number=d["number"],
        state=TrialState[d["state"].upper()],
        value=None,
        values=None if values is None else [math.nan if v is None else float(v) for v in values],
        datetime_start=when(d.get("datetime_start")),
        datetime_complete=when(d.get("datetime_complete")),
        params=dict(d.get("params") or {}),
        distributions={k: _distribution(v) for k, v in (d.get("distributions") or {}).items()},
        user_attrs=dict(d.get("user_attrs") or {}),
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )


def quote_name(name: str) -> str:
    """A study name as one URL path segment."""
    return quote(name, safe="")
