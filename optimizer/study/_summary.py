"""Distributions, not means: ``summarize(samples) -> Summary``.

A Summary is n, mean, std (population, ddof=0), min, p50, p90, p99 (numpy's
linear interpolation), max and a histogram of at most 20 equal-width bins, and
how sure the mean is: its standard error ``sem`` (sample std, ddof=1, over
sqrt(n)) and a 95% confidence interval [``ci_low``, ``ci_high``]:

- ``ci_method == "wilson"`` when every sample is 0 or 1 (pass/fail scores): the
  Wilson score interval, which stays inside [0, 1] and is not degenerate at 0/n
  or n/n, unlike the normal approximation;
- ``ci_method == "t"`` otherwise: Student's t interval, mean ± t(0.975, n-1)·sem.

n = 1 or all-equal samples give a degenerate but finite interval (sem 0; the
Wilson interval of a single 0 or 1 is still wide, as it should be).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from studyhall.storage import InvalidRequest

MAX_BINS = 20
FIELDS = ("n", "mean", "std", "min", "p50", "p90", "p99", "max")
INTERVAL_FIELDS = ("sem", "ci_low", "ci_high")
"""The mean's uncertainty, beside FIELDS in as_dict() and in the ``name.sem``-style user_attrs."""
Z95 = 1.959963984540054  # the normal distribution's 0.975 quantile
_MAX = sys.float_info.max
# Student's t 0.975 quantiles for 1-30 degrees of freedom (scipy.stats.t.ppf); beyond 30 the
# Cornish-Fisher expansion in _t975 is within 4e-8 of them, with no scipy import on tell's path.
_T975 = (
    12.7062047362,
    4.3026527297,
    3.1824463053,
    2.7764451052,
    2.5705818356,
    2.4469118511,
    2.3646242516,
    2.3060041352,
    2.2621571628,
    2.228138852,
    2.2009851601,
    2.1788128297,
    2.1603686565,
    2.1447866879,
    2.1314495456,
    2.1199052992,
    2.1098155778,
    2.1009220402,
    2.0930240544,
    2.0859634473,
    2.0796138447,
    2.0738730679,
    2.0686576104,
    2.0638985616,
    2.0595385528,
    2.0555294386,
    2.0518305165,
    2.0484071418,
    2.0452296421,
    2.0422724563,
)


@dataclass(frozen=True)
class Summary:
    """The distribution of one metric: count, moments, quantiles, a histogram and the mean's 95% interval.

    ``sem``, ``ci_low``, ``ci_high`` and ``ci_method`` (``"wilson"`` for 0/1 samples,
    ``"t"`` otherwise) are derived from the others when not given, so a Summary
    built from the eight statistics alone (an older storage row) has them too.
    """

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    histogram: list[tuple[float, float, int]] = field(default_factory=list)
    sem: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_method: str = ""

    def __post_init__(self) -> None:
        if not self.ci_method and self.n > 0:
            sem, lo, hi, method = mean_interval(self.n, self.mean, self.std, _looks_binary(self))
            for k, v in (("sem", sem), ("ci_low", lo), ("ci_high", hi), ("ci_method", method)):
                object.__setattr__(self, k, v)

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data (histogram as [lo, hi, count] lists)."""
        # Built by hand: dataclasses.asdict deep-copies, and tell() calls this per metric.
        d: dict[str, Any] = {k: getattr(self, k) for k in FIELDS}
        d["histogram"] = [list(b) for b in self.histogram]
        d["sem"], d["ci_low"], d["ci_high"], d["ci_method"] = self.sem, self.ci_low, self.ci_high, self.ci_method
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """Rebuild a Summary from :meth:`as_dict` output or a storage row (the interval derived if absent)."""
        hist = [(float(lo), float(hi), int(c)) for lo, hi, c in d.get("histogram") or []]
        extra: dict[str, Any] = {}
        if d.get("ci_method"):
            extra = {k: float(d[k]) if d.get(k) is not None else math.nan for k in INTERVAL_FIELDS}
            extra["ci_method"] = str(d["ci_method"])
        stats: dict[str, Any] = {k: float(d[k]) if d[k] is not None else math.nan for k in FIELDS[1:]}
        return cls(n=int(d["n"]), **stats, histogram=hist, **extra)


def as_array(samples: Iterable[float], what: str = "samples", *, finite: bool = True) -> np.ndarray:
    """``samples`` as a 1-d float64 array; non-numeric values are an InvalidRequest, and non-finite ones unless ``finite=False``."""
    try:
        arr = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what} must be numbers; got {samples!r:.80}") from exc
    arr = arr.reshape(-1)
    if finite:
        _check_finite(arr, what)
    return arr


def _check_finite(arr: np.ndarray, what: str) -> None:
    if arr.size and not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)][0]
        raise InvalidRequest(f"{what} contain a non-finite value ({bad}); pass finite numbers only")


def summarize(samples: Iterable[float] | np.ndarray, bins: int = MAX_BINS) -> Summary:
    """Summarise ``samples`` (finite numbers, at least one).

    Example:
        >>> summarize([1, 0, 1, 1]).mean
        0.75
    """
    arr = as_array(samples)
    if arr.size == 0:
        raise InvalidRequest("cannot summarise an empty list of samples; pass at least one")
    return summarize_array(arr, bins)


def summarize_array(arr: np.ndarray, bins: int = MAX_BINS, *, what: str | None = None) -> Summary:
    """:func:`summarize` of samples :func:`as_array` already checked (1-d float64, finite, at least one).

    ``what``: the samples' finiteness is not checked yet (``as_array(..., finite=False)``);
    a non-finite one is an InvalidRequest naming ``what``.
    """
    # tell() runs this once per metric with the CPU caches full of SQL work, where each numpy
    # call costs several microseconds. Pass/fail scores, the common case, are all 0 or 1: two
    # counts say everything, and the rest is arithmetic on them (they need no finiteness pass).
    ones = int(np.count_nonzero(arr == 1.0))
    if ones == int(np.count_nonzero(arr)):  # every sample that is not 0 is 1 (NaN and inf are neither)
        return _binary_summary(arr.size, ones, bins)
    if what is not None:
        _check_finite(arr, what)
    return _sorted_summary(arr, bins)


def _binary_summary(n: int, ones: int, bins: int) -> Summary:
    """The Summary of ``n`` samples of which ``ones`` are 1 and the others 0, as :func:`_sorted_summary` makes it."""
    zeros = n - ones
    lo, hi = (0.0 if zeros else 1.0), (1.0 if ones else 0.0)
    at, frac = _quantile_positions(n)
    picked = [0.0 if i < zeros else 1.0 for i in at.tolist()]  # sorted, the zeros come first
    p50, p90, p99 = (_between(picked[1 + 2 * i], picked[2 + 2 * i], frac[i]) for i in range(3))
    mean = ones / n  # the sum of the samples is exactly ``ones``
    std = math.sqrt((zeros * mean * mean + ones * (1.0 - mean) * (1.0 - mean)) / n)
    if zeros and ones and bins >= 2:  # two distinct values: two bins, [0, 0.5) and [0.5, 1]
        hist = [(0.0, 0.5, zeros), (0.5, 1.0, ones)]
    elif zeros and ones:
        hist = [(0.0, 1.0, n)]
    else:
        hist = [(lo - 0.5, hi + 0.5, n)]
    sem, ci_low, ci_high, method = mean_interval(n, mean, std, True)
    return Summary(n, mean, std, lo, p50, p90, p99, hi, hist, sem, ci_low, ci_high, method)


def _sorted_summary(arr: np.ndarray, bins: int) -> Summary:
    # One sort serves the quantiles (read with one fancy index), the distinct count and the
    # histogram (one searchsorted); scalar arithmetic stays in Python.
    n = arr.size
    srt = np.sort(arr)
    at, frac = _quantile_positions(n)
    picked = srt[at].tolist()  # min, then (below, above) of p50, p90, p99, then max
    lo, hi = picked[0], picked[-1]
    p50, p90, p99 = (_between(picked[1 + 2 * i], picked[2 + 2 * i], frac[i]) for i in range(3))
    # Squares of samples beyond ~1e154 overflow float64: take the moments of scaled values.
    scale = max(abs(lo), abs(hi))
    scale = scale if scale > 1e150 else 1.0
    scaled = arr / scale if scale != 1.0 else arr
    mean = float(scaled.sum()) / n  # numpy's pairwise sum, as its mean
    dev = scaled - mean
    std = math.sqrt(float(np.dot(dev, dev)) / n)
    distinct = 1 + int(np.count_nonzero(srt[1:] != srt[:-1]))  # not np.diff: it overflows near the float limit
    nbins = max(1, min(bins, distinct))
    if hi > lo:  # np.linspace(lo, hi, nbins + 1), in Python floats (the same IEEE arithmetic)
        width = hi - lo
        if math.isfinite(width):
            step = width / nbins
            inner = [i * step + lo for i in range(1, nbins)]
        else:  # hi - lo beyond the largest float: lo * (1 - t) + hi * t, whose terms cannot overflow
            inner = [lo * (1.0 - i / nbins) + hi * (i / nbins) for i in range(1, nbins)]
        e = [lo, *inner, hi]
    else:
        e = [lo - 0.5, hi + 0.5]
    # Bins are [a, b) except the last, [a, b], as in numpy.histogram.
    cuts = [0, *np.searchsorted(srt, e[1:-1], side="left").tolist(), n] if len(e) > 2 else [0, n]
    hist = [(e[i], e[i + 1], cuts[i + 1] - cuts[i]) for i in range(len(e) - 1)]
    mean, std = mean * scale, std * scale
    binary = distinct <= 2 and lo in (0.0, 1.0) and hi in (0.0, 1.0)  # at most two distinct values, both 0 or 1
    sem, ci_low, ci_high, method = mean_interval(n, mean, std, binary)
    return Summary(
        n=n,
        mean=mean,
        std=std,
        min=lo,
        p50=p50,
        p90=p90,
        p99=p99,
        max=hi,
        histogram=hist,
        sem=sem,
        ci_low=ci_low,
        ci_high=ci_high,
        ci_method=method,
    )


def mean_interval(n: int, mean: float, std: float, binary: bool) -> tuple[float, float, float, str]:
    """(sem, ci_low, ci_high, method) of the mean of ``n`` samples with population std ``std``.

    ``binary``: the samples are all 0 or 1, so the Wilson score interval; else Student's t.
    Always finite for finite inputs (bounds beyond the float range are clamped to it).

    Example:
        >>> [round(x, 3) for x in mean_interval(30, 0.9, 0.3, True)[1:3]]
        [0.744, 0.965]
    """
    if n <= 0 or not math.isfinite(mean) or not math.isfinite(std):
        return math.nan, math.nan, math.nan, ""
    sem = std / math.sqrt(n - 1) if n > 1 else 0.0  # the sample std (ddof=1) over sqrt(n)
    if binary:
        p, z2n = min(1.0, max(0.0, mean)), Z95 * Z95 / n
        center = (p + z2n / 2) / (1 + z2n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
        return sem, max(0.0, center - half), min(1.0, center + half), "wilson"
    half = _t975(n - 1) * sem if n > 1 else 0.0
    return sem, _clamp(mean - half), _clamp(mean + half), "t"


def _t975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom."""
    if df <= len(_T975):
        return _T975[df - 1]
    z, z2 = Z95, Z95 * Z95  # Cornish-Fisher: the normal quantile plus terms in 1/df
    return z + z * (
        (z2 + 1) / (4 * df)
        + (5 * z2 * z2 + 16 * z2 + 3) / (96 * df**2)
        + ((3 * z2 + 19) * z2 * z2 + 17 * z2 - 15) / (384 * df**3)
        + (((79 * z2 + 776) * z2 + 1482) * z2 * z2 - 1920 * z2 - 945) / (92160 * df**4)
    )


def _clamp(x: float) -> float:
    # mean ± t·sem of samples near the float limit can leave the float range: a bound stays finite.
    return _MAX if x > _MAX else -_MAX if x < -_MAX else x


def _looks_binary(s: Summary) -> bool:
    """Whether a Summary given without its interval summarises 0/1 samples (from its min, max and bins)."""
    if s.min not in (0.0, 1.0) or s.max not in (0.0, 1.0):
        return False
    return s.min == s.max or len(s.histogram) == 2  # two bins from 0 to 1: exactly two distinct values


@functools.lru_cache(maxsize=256)
def _quantile_positions(n: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Where numpy's default ("linear") p50, p90, p99 of ``n`` sorted samples read: the indexes
    (min, below and above each quantile, max) and each quantile's fraction of the way up."""
    at, frac = [0], []
    for q in (0.50, 0.90, 0.99):
        pos = q * (n - 1)
        below = int(pos)
        at += [below, min(below + 1, n - 1)]
        frac.append(pos - below)
    at.append(n - 1)
    return np.array(at, dtype=np.intp), (frac[0], frac[1], frac[2])


def _between(a: float, b: float, f: float) -> float:
    if math.isfinite(b - a):
        return a + (b - a) * f
    return a * (1.0 - f) + b * f  # b - a beyond the largest float: weigh the two instead


def summary_attrs(name: str, s: Summary) -> dict[str, float | int]:
    """The flat ``name.p50``-style user_attrs that optuna-dashboard shows for a summary (``name.ci_low`` too)."""
    return {f"{name}.{k}": getattr(s, k) for k in (*FIELDS, *INTERVAL_FIELDS)}


def interval_text(low: Any, high: Any, method: Any = None) -> str:
    """``[0.744, 0.965] (Wilson)``: a 95% interval as the note, the CLI and the report print it."""
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or math.isnan(low) or math.isnan(high):
        return "-"
    how = {"wilson": " (Wilson)", "t": " (t)"}.get(str(method), "")
    return f"[{low:.3g}, {high:.3g}]{how}"
