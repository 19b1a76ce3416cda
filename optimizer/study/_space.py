"""Search-space types: ``Float``, ``Int``, ``Categorical`` and their Optuna distributions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import optuna.distributions as od

from studyhall.optimizer._optuna import contains
from studyhall.storage import InvalidRequest

CategoricalChoice: TypeAlias = None | bool | int | float | str


@dataclass(frozen=True)
class Float:
    """A float parameter in [low, high]; ``log=True`` samples on a log scale, ``step`` discretises."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequest(f"Float bounds must be finite numbers; got low={self.low!r}, high={self.high!r}")
        if self.low > self.high:
            raise InvalidRequest(f"Float(low={self.low}, high={self.high}): low must be <= high; swap them")
        if not math.isfinite(float(self.high) - float(self.low)):
            # A sampler draws low + u * (high - low): the width itself must be a float.
            raise InvalidRequest(
                f"Float(low={self.low:g}, high={self.high:g}) is wider than a float can hold; keep high - low "
                "below 1.7e308 (or sample the exponent: Float(..., log=True))"
            )
        if self.log and self.low <= 0:
            raise InvalidRequest(f"Float(log=True) needs low > 0; got low={self.low}")
        if self.log and self.step is not None:
            raise InvalidRequest("Float takes log=True or step=..., not both")
        if self.step is not None and not self.step > 0:
            raise InvalidRequest(f"Float step must be > 0; got {self.step}")
        if self.step is not None:
            # Optuna would silently lower `high` to the last step (with a warning).
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-8 * max(1.0, abs(n)):
                raise InvalidRequest(
                    f"Float(low={self.low}, high={self.high}, step={self.step}): high - low must be a "
                    f"multiple of step; use high={self.low + int(n) * self.step:g}"
                )

    def distribution(self) -> od.BaseDistribution:
        """The equivalent Optuna distribution."""
        return od.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Int:
    """An integer parameter in [low, high] (both included); ``log`` and ``step`` as in Optuna."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        for v in (self.low, self.high, self.step):
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidRequest(
                    f"Int bounds and step must be integers; got low={self.low!r}, high={self.high!r}, step={self.step!r}"
                )
        if self.low > self.high:
            raise InvalidRequest(f"Int(low={self.low}, high={self.high}): low must be <= high; swap them")
        if not (self.low >= -_INT_LIMIT and self.high <= _INT_LIMIT):
            raise InvalidRequest(
                f"Int bounds must lie within ±2**53 (a float stores them exactly); got low={self.low}, high={self.high}"
            )
        if self.step < 1:
            raise InvalidRequest(f"Int step must be >= 1; got {self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise InvalidRequest("Int(log=True) needs low >= 1 and step=1")
        if (self.high - self.low) % self.step:
            raise InvalidRequest(
                f"Int(low={self.low}, high={self.high}, step={self.step}): high - low must be a multiple "
                f"of step; use high={self.low + (self.high - self.low) // self.step * self.step}"
            )

    def distribution(self) -> od.BaseDistribution:
        """The equivalent Optuna distribution."""
        return od.IntDistribution(self.low, self.high, log=self.log, step=self.step)


_INT_LIMIT = 2**53  # Optuna stores every parameter as a float


class Categorical:
    """A choice among ``choices`` (None, bool, int, float or str), e.g. ``Categorical(range(8))``."""

    __slots__ = ("choices",)

    def __init__(self, choices: Iterable[CategoricalChoice]) -> None:
        if isinstance(choices, (str, bytes)):
            raise InvalidRequest(f"Categorical takes a sequence of choices, not the string {choices!r}")
        self.choices: tuple[CategoricalChoice, ...] = tuple(choices)
        if not self.choices:
            raise InvalidRequest("Categorical needs at least one choice; got an empty sequence")
        for c in self.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise InvalidRequest(
                    f"Categorical choices must be None, bool, int, float or str; got {type(c).__name__} {c!r:.60}. "
                    "Choose by index instead (Categorical(range(n)))"
                )

    def __repr__(self) -> str:
        return f"Categorical({list(self.choices)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Categorical) and self.choices == other.choices

    def __hash__(self) -> int:
        return hash(self.choices)

    def distribution(self) -> od.BaseDistribution:
        """The equivalent Optuna distribution."""
        return od.CategoricalDistribution(self.choices)


Param: TypeAlias = Float | Int | Categorical
Space: TypeAlias = Mapping[str, Param]


def to_distributions(space: Space | None) -> dict[str, od.BaseDistribution]:
    """Optuna distributions for a space; an InvalidRequest for anything that is not one."""
    if space is None:
        return {}
    if not isinstance(space, Mapping):
        raise InvalidRequest(f"a space is a dict of name -> Float/Int/Categorical; got {type(space).__name__}")
    out: dict[str, od.BaseDistribution] = {}
    for name, p in space.items():
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"parameter names must be non-empty strings; got {name!r}")
        if isinstance(p, od.BaseDistribution):
            out[name] = p
        elif isinstance(p, (Float, Int, Categorical)):
            out[name] = p.distribution()
        else:
            raise InvalidRequest(
                f"parameter {name!r} is a {type(p).__name__}; use Float(low, high), Int(low, high) or Categorical([...])"
            )
    return out


def check_params(params: Mapping[str, Any], dists: Mapping[str, od.BaseDistribution]) -> None:
    """Raise InvalidRequest if a value in ``params`` lies outside its distribution."""
    for name, value in params.items():
        d = dists.get(name)
        if d is None:
            raise InvalidRequest(f"parameter {name!r} is not in the space (known: {sorted(dists)})")
        if not contains(d, value):
            raise InvalidRequest(f"parameter {name!r}={value!r} lies outside its space {d}")


def distribution_spec(d: od.BaseDistribution) -> dict[str, Any]:
    """An Optuna distribution in the HTTP service's JSON (``{"type": "float", "low", ...}``)."""
    if isinstance(d, od.FloatDistribution):
        return {"type": "float", "low": d.low, "high": d.high, "log": d.log, "step": d.step}
    if isinstance(d, od.IntDistribution):
        return {"type": "int", "low": d.low, "high": d.high, "log": d.log, "step": d.step}
    if isinstance(d, od.CategoricalDistribution):
        return {"type": "categorical", "choices": list(d.choices)}
    raise InvalidRequest(f"no JSON form for a {type(d).__name__}; use Float, Int or Categorical")


def space_to_json(dists: Mapping[str, od.BaseDistribution]) -> dict[str, str]:
    """Serialise distributions for storage in the study's system attributes."""
    return {k: od.distribution_to_json(v) for k, v in dists.items()}


def space_from_json(data: Mapping[str, str]) -> dict[str, od.BaseDistribution]:
    """The inverse of :func:`space_to_json`."""
    return {k: od.json_to_distribution(v) for k, v in data.items()}
