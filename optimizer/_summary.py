"""Distributions, not means: ``summarize(samples) -> Summary``.

A Summary is n, mean, std (population, ddof=0), min, p50, p90, p99 (numpy's
linear interpolation), max and a histogram of at most 20 equal-width bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage import InvalidRequest

MAX_BINS = 20
FIELDS = ("n", "mean", "std", "min", "p50", "p90", "p99", "max")


@dataclass(frozen=True)
class Summary:
    """The distribution of one metric: count, moments, quantiles and a histogram."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    histogram: list[tuple[float, float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data (histogram as [lo, hi, count] lists)."""
        # Built by hand: dataclasses.asdict deep-copies, and tell() calls this per metric.
        d: dict[str, Any] = {k: getattr(self, k) for k in FIELDS}
        d["histogram"] = [list(b) for b in self.histogram]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """Rebuild a Summary from :meth:`as_dict` output or a storage row."""
        hist = [(float(lo), float(hi), int(c)) for lo, hi, c in d.get("histogram") or []]
        return cls(
            n=int(d["n"]),
            **{k: float(d[k]) if d[k] is not None else math.nan for k in FIELDS[1:]},
            histogram=hist,
        )


def as_array(samples: Iterable[float], what: str = "samples") -> np.ndarray:
    """``samples`` as a 1-d float64 array; non-numeric or non-finite values are an InvalidRequest."""
    try:
        arr = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what} must be numbers; got {samples!r:.80}") from exc
    arr = arr.reshape(-1)
    if arr.size and not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)][0]
        raise InvalidRequest(f"{what} contain a non-finite value ({bad}); pass finite numbers only")
    return arr


def summarize(samples: Iterable[float] | np.ndarray, bins: int = MAX_BINS) -> Summary:
    """Summarise ``samples`` (finite numbers, at least one).

    Example:
        >>> summarize([1, 0, 1, 1]).mean
        0.75
    """
    arr = as_array(samples)
    if arr.size == 0:
        raise InvalidRequest("cannot summarise an empty list of samples; pass at least one")
    # One sort serves the quantiles, the distinct count and the histogram (tell() runs this
    # once per metric, so it is on the hot path).
    srt = np.sort(arr)
    n = srt.size
    p50, p90, p99 = _quantiles(srt, (0.50, 0.90, 0.99))
    lo, hi = float(srt[0]), float(srt[-1])
    # Squares of samples beyond ~1e154 overflow float64: take the moments of scaled values.
    scale = max(abs(lo), abs(hi))
    scale = scale if scale > 1e150 else 1.0
    scaled = arr / scale if scale != 1.0 else arr
    distinct = 1 + int(np.count_nonzero(srt[1:] != srt[:-1]))
    nbins = max(1, min(bins, distinct))
    edges = np.linspace(lo, hi, nbins + 1) if hi > lo else np.array([lo - 0.5, hi + 0.5])
    # Bins are [a, b) except the last, [a, b], as in numpy.histogram.
    cuts = np.searchsorted(srt, edges[1:-1], side="left")
    counts = np.diff(np.concatenate(([0], cuts, [n])))
    hist = [(float(edges[i]), float(edges[i + 1]), int(c)) for i, c in enumerate(counts)]
    return Summary(
        n=int(arr.size),
        mean=float(scaled.mean()) * scale,
        std=float(scaled.std()) * scale,
        min=lo,
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        max=hi,
        histogram=hist,
    )


def _quantiles(srt: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    # numpy's default ("linear") percentile, read off an already sorted array.
    pos = np.asarray(qs) * (srt.size - 1)
    below = np.floor(pos).astype(np.intp)
    above = np.minimum(below + 1, srt.size - 1)
    frac = pos - below
    return [float(v) for v in srt[below] + (srt[above] - srt[below]) * frac]


def summary_attrs(name: str, s: Summary) -> dict[str, float | int]:
    """The flat ``name.p50``-style user_attrs that optuna-dashboard shows for a summary."""
    return {f"{name}.{k}": getattr(s, k) for k in FIELDS}
