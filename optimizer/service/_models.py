"""The JSON shapes of the HTTP service (pydantic), and their conversions to studyhall objects.

The models describe *shapes* (types, required fields, sizes that keep one request
cheap); the meaning of a value (low <= high, a known sampler, a finite value) is
checked where it always is, in :class:`optimizer.Study` and the space types, so
the service and the in-process API reject the same things with the same words.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import optuna.distributions as od
from optuna.trial import FrozenTrial
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from studyhall.optimizer.study._space import Categorical, Float, Int, Param, distribution_spec
from studyhall.optimizer.study._summary import Summary

# JSON numbers a double holds exactly; larger integers would be rounded by Optuna's
# float storage of parameters and by JavaScript clients.
MAX_SAFE_INT = 2**53
# Float bounds stay well inside the double range so that samplers' arithmetic
# (widths, squares, log) cannot overflow.
MAX_ABS_FLOAT = 1e15
MAX_NAME = 512  # Optuna's indexed string columns
MAX_TRIAL_NUMBER = 2**31 - 1  # Optuna's integer column
MAX_PARAMS = 256
MAX_CHOICES = 1000
MAX_K = 256
MAX_LEASE_S = 7 * 86400.0
# Levels of arrays and objects inside one user attribute. pydantic refuses to serialize
# about 250 levels, and a trial that cannot be serialized cannot be read back (issue 13,
# item 6): deeper attributes are refused at the door, and deeper ones stored by other
# means are cut at this depth on the way out (see ``finite``).
MAX_ATTR_DEPTH = 32


def _whole(v: Any) -> Any:
    # JSON Schema counts 60.0 as an integer; bools and strings stay errors (strict).
    # (After Field in Annotated, or pydantic drops the bounds from the JSON schema.)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


WHOLE = BeforeValidator(_whole)
IntBound = Annotated[int, Field(strict=True, ge=-MAX_SAFE_INT, le=MAX_SAFE_INT), WHOLE]
IntStep = Annotated[int, Field(strict=True, ge=1, le=MAX_SAFE_INT), WHOLE]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1), WHOLE]
Retries = Annotated[int, Field(strict=True, ge=0, le=100), WHOLE]
BatchSize = Annotated[int, Field(strict=True, ge=1, le=MAX_K), WHOLE]

# Text that lands in raw database columns (names, keys): PostgreSQL refuses NUL there.
NO_NUL = r"^[^\x00]+$"
# Told numbers are summarised (squares, differences): beyond 1e100 that overflows a double.
MAX_ABS_SAMPLE = 1e100
Number = Annotated[float, Field(strict=True, ge=-MAX_ABS_SAMPLE, le=MAX_ABS_SAMPLE)]
Bound = Annotated[float, Field(strict=True, ge=-MAX_ABS_FLOAT, le=MAX_ABS_FLOAT)]
# A study name is a path segment of every study URL: no "/" either.
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00/]+$")]
ParamName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=NO_NUL)]
AttrName = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]
MetricName = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)]
Choice = None | StrictBool | StrictInt | StrictFloat | Annotated[str, Field(max_length=1024)]
Direction = Literal["minimize", "maximize"]


def nesting(value: Any, limit: int) -> int:
    """Levels of lists and dicts in ``value`` (a scalar is 0), counted up to ``limit + 1``; no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, Mapping):
            children: Any = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > limit:
            return deepest
        stack.extend((c, level + 1) for c in children)
    return deepest


def _shallow(attrs: dict[str, Any]) -> dict[str, Any]:
    for key, value in attrs.items():
        if nesting(value, MAX_ATTR_DEPTH) > MAX_ATTR_DEPTH:
            raise ValueError(
                f"attribute {key!r} nests arrays and objects deeper than {MAX_ATTR_DEPTH} levels; "
                "flatten it, or send it as a JSON string"
            )
    return attrs


UserAttrs = Annotated[dict[AttrName, Any], Field(max_length=64), AfterValidator(_shallow)]
LeaseS = Annotated[float, Field(strict=True, gt=0, le=MAX_LEASE_S)]
TrialStateName = Literal["running", "waiting", "complete", "pruned", "fail"]


class Model(BaseModel):
    """Base of every request model: unknown fields and NaN/Infinity are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FloatParam(Model):
    """A float parameter in [low, high]."""

    type: Literal["float"]
    low: Bound
    high: Bound
    log: StrictBool = False
    step: Annotated[float, Field(strict=True, gt=0, le=MAX_ABS_FLOAT)] | None = None


class IntParam(Model):
    """An integer parameter in [low, high], both included."""

    type: Literal["int"]
    low: IntBound
    high: IntBound
    log: StrictBool = False
    step: IntStep = 1


class CategoricalParam(Model):
    """A choice among ``choices``."""

    type: Literal["categorical"]
    choices: Annotated[list[Choice], Field(min_length=1, max_length=MAX_CHOICES)]


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
SpaceSpec = Annotated[dict[ParamName, ParamSpec], Field(max_length=MAX_PARAMS)]


class CreateStudy(Model):
    """POST /v1/studies."""

    name: Name
    direction: Direction | None = None
    directions: Annotated[list[Direction], Field(min_length=1, max_length=16)] | None = None
    sampler: Literal["tpe", "random", "cmaes", "nsga2"] = "tpe"
    seed: Seed | None = None
    load_if_exists: StrictBool = False
    retries: Retries | None = None


class AskRequest(Model):
    """POST /v1/studies/{name}/ask: ``k`` trials from ``space`` (default: the study's last space)."""

    space: SpaceSpec | None = None
    k: BatchSize = 1
    lease_s: LeaseS = 300.0


class TellRequest(Model):
    """POST /v1/studies/{name}/trials/{number}/tell."""

    value: Number | None = None
    values: Annotated[list[Number], Field(max_length=16)] | None = None
    scores: list[Number] | None = None
    state: Literal["complete", "fail", "pruned"] | None = None
    error: Annotated[str, Field(max_length=10_000)] | None = None
    metrics: Annotated[dict[MetricName, list[Number]], Field(max_length=64)] | None = None
    user_attrs: UserAttrs | None = None
    #: Names this tell: sent again with the same key after the trial was told by it, the
    #: answer is the trial as stored (200), not TrialFinished. Client sets it per tell.
    key: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None


class HeartbeatRequest(Model):
    """POST .../heartbeat: renew the lease, optionally with a new length."""

    lease_s: LeaseS | None = None


class EnqueueRequest(Model):
    """POST /v1/studies/{name}/enqueue: parameters for the next ask."""

    params: Annotated[dict[ParamName, Choice], Field(max_length=MAX_PARAMS)]
    user_attrs: UserAttrs | None = None


class ErrorBody(BaseModel):
    """What went wrong: ``type`` names the kind of error, ``message`` says what to do."""

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorBody


class StudyInfoOut(BaseModel):
    """One study in GET /v1/studies."""

    name: str
    directions: list[str]
    n_trials: int
    best_value: float | None


class StudyOut(StudyInfoOut):
    """GET /v1/studies/{name}: the study and what it has learned so far."""

    best_params: dict[str, Any] | None
    best_trial: int | None
    retries: int


class AskedTrial(BaseModel):
    """A trial to evaluate: tell it (or renew its lease) before ``lease_expires_at``."""

    number: int
    params: dict[str, Any]
    lease_expires_at: float


class AskResponse(BaseModel):
    """The trials handed out by one ask."""

    trials: list[AskedTrial]


class FloatOut(BaseModel):
    """A stored float distribution."""

    type: Literal["float"]
    low: float
    high: float
    log: bool
    step: float | None


class IntOut(BaseModel):
    """A stored integer distribution."""

    type: Literal["int"]
    low: int
    high: int
    log: bool
    step: int


class CategoricalOut(BaseModel):
    """A stored categorical distribution."""

    type: Literal["categorical"]
    choices: list[Any]


DistributionOut = Annotated[FloatOut | IntOut | CategoricalOut, Field(discriminator="type")]


class TrialOut(BaseModel):
    """One trial as stored (datetimes in ISO 8601, states lower-case)."""

    number: int
    state: TrialStateName
    value: float | None
    values: list[float | None] | None
    params: dict[str, Any]
    distributions: dict[str, DistributionOut]
    user_attrs: dict[str, Any]
    datetime_start: str | None
    datetime_complete: str | None
    duration_s: float | None


class TrialsPage(BaseModel):
    """A slice of a study's trials, ordered by number."""

    trials: list[TrialOut]
    total: int
    offset: int
    limit: int


class LeaseOut(BaseModel):
    """A renewed lease."""

    number: int
    lease_expires_at: float


class SummaryOut(BaseModel):
    """A distribution: count, moments, quantiles, histogram [lo, hi, count]."""

    n: int
    mean: float | None
    std: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    histogram: list[tuple[float, float, int]]


class Health(BaseModel):
    """GET /healthz."""

    status: Literal["ok"]


class Queued(BaseModel):
    """POST /v1/studies/{name}/enqueue."""

    queued: bool


# ---- conversions -----------------------------------------------------------------------


def space_from_spec(space: Mapping[str, FloatParam | IntParam | CategoricalParam]) -> dict[str, Param]:
    """The wire space as Float/Int/Categorical (their own checks raise InvalidRequest)."""
    out: dict[str, Param] = {}
    for name, p in space.items():
        if isinstance(p, FloatParam):
            out[name] = Float(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = Int(p.low, p.high, log=p.log, step=p.step)
        else:
            out[name] = Categorical(p.choices)
    return out


def spec_of(d: od.BaseDistribution) -> dict[str, Any]:
    """An Optuna distribution in the wire format."""
    return distribution_spec(d)


def finite(v: Any, depth: int = MAX_ATTR_DEPTH + 1) -> Any:
    """JSON-safe data: non-finite floats become null, tuples lists, unknown objects strings.

    Lists and dicts nested deeper than ``depth`` levels (only stored by other means than
    the service, which refuses them) become a string saying so, so that every stored trial
    can be read over HTTP.
    """
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (Mapping, list, tuple)) and depth <= 0:
        return (
            f"<nested deeper than {MAX_ATTR_DEPTH} levels: not shown over HTTP; read it in Python with Study.trial(n)>"
        )
    if isinstance(v, Mapping):
        return {str(k): finite(x, depth - 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x, depth - 1) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return finite(v.item(), depth)
    return str(v)


def _iso(dt: datetime.datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def trial_out(t: FrozenTrial) -> dict[str, Any]:
    """A FrozenTrial as a TrialOut dict."""
    values = None if t.values is None else [finite(float(v)) for v in t.values]
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": values[0] if values and len(values) == 1 else None,
        "values": values,
        "params": finite(t.params),
        "distributions": {k: spec_of(d) for k, d in t.distributions.items()},
        "user_attrs": finite(t.user_attrs),
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "duration_s": t.duration.total_seconds() if t.duration is not None else None,
    }


def summary_out(s: Summary) -> dict[str, Any]:
    """A Summary as a SummaryOut dict (NaN as null)."""
    return finite(s.as_dict())  # type: ignore[no-any-return]
