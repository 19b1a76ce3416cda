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

from studyhall.storage import InvalidRequest

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
    n = arr.size
    if n == 0:
        raise InvalidRequest("cannot summarise an empty list of samples; pass at least one")
    # tell() runs this once per metric with the CPU caches full of SQL work, where each
    # numpy call costs microseconds: one sort serves the quantiles, the distinct count and
    # the histogram, and scalar arithmetic stays in Python.
    srt = np.sort(arr)
    lo, hi = float(srt[0]), float(srt[-1])
    p50, p90, p99 = (_quantile(srt, q) for q in (0.50, 0.90, 0.99))
    # Squares of samples beyond ~1e154 overflow float64: take the moments of scaled values.
    scale = max(abs(lo), abs(hi))
    scale = scale if scale > 1e150 else 1.0
    scaled = arr / scale if scale != 1.0 else arr
    mean = float(scaled.sum()) / n  # the same pairwise sums as numpy's mean and std
    dev = scaled - mean
    std = math.sqrt(float((dev * dev).sum()) / n)
    nbins = max(1, min(bins, 1 + int(np.count_nonzero(srt[1:] != srt[:-1]))))
    if hi > lo:  # np.linspace(lo, hi, nbins + 1), without its per-call checks
        steps = _STEPS[nbins] if nbins <= MAX_BINS else np.arange(nbins + 1, dtype=np.float64)
        width = hi - lo
        if math.isfinite(width):
            edges = steps * (width / nbins) + lo
        else:  # hi - lo beyond the largest float: lo * (1 - t) + hi * t, whose terms cannot overflow
            t = steps / nbins
            edges = lo * (1.0 - t) + hi * t
        edges[-1] = hi
    else:
        edges = np.array([lo - 0.5, hi + 0.5])
    # Bins are [a, b) except the last, [a, b], as in numpy.histogram.
    cuts = [0, *np.searchsorted(srt, edges[1:-1], side="left").tolist(), n]
    e = edges.tolist()
    hist = [(e[i], e[i + 1], cuts[i + 1] - cuts[i]) for i in range(len(e) - 1)]
    return Summary(n=n, mean=mean * scale, std=std * scale, min=lo, p50=p50, p90=p90, p99=p99, max=hi, histogram=hist)


_STEPS = [np.arange(k + 1, dtype=np.float64) for k in range(MAX_BINS + 1)]


def _quantile(srt: np.ndarray, q: float) -> float:
    # numpy's default ("linear") percentile, read off an already sorted array.
    pos = q * (srt.size - 1)
    below = int(pos)
    above = min(below + 1, srt.size - 1)
    a, b = float(srt[below]), float(srt[above])
    if math.isfinite(b - a):
        return a + (b - a) * (pos - below)
    f = pos - below  # b - a beyond the largest float: weigh the two instead
    return a * (1.0 - f) + b * f


def summary_attrs(name: str, s: Summary) -> dict[str, float | int]:
    """The flat ``name.p50``-style user_attrs that optuna-dashboard shows for a summary."""
    return {f"{name}.{k}": getattr(s, k) for k in FIELDS}
