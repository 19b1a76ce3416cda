"""The Prometheus side of telemetry: one registry of this process's series, fed once per told trial.

Everything is aggregated in the process that tells (the parent of a worker pool),
so there are no multiprocess files. Histograms take a whole trial's samples in
one numpy call: a tell with 1,000 scores costs one ``searchsorted``, not 1,000
``observe`` calls; pass/fail scores (a Wilson interval in their Summary) cost
two additions, from the counts the Summary already took.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from optuna.trial import TrialState

registry = CollectorRegistry(auto_describe=True)
"""Every studyhall metric of this process; serve it with ``prometheus_client.generate_latest``."""

VALUE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0)
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The per-trial counters that LLM code adds to the task recorder, summed into user_attrs.
LLM_CALLS = ("llm.calls", "llm.requests")
LLM_429 = ("llm.rate_limited", "llm.429", "llm.http_429")
LLM_RETRIES = ("llm.retries",)
LLM_ATTEMPTS = "llm.attempts"  # a sample per successful call (LLMClient)
SCORE = "score"
LATENCY = "llm.latency_s"


class _BulkHistogram(Collector):
    """A labelled Prometheus histogram fed whole arrays at a time."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], label: str = "study") -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._bounds = self.bounds.tolist()  # for bisect: the same "left" search as searchsorted
        self._series: dict[str, tuple[np.ndarray, list[float]]] = {}  # label -> (counts, [sum])
        self._lock = threading.Lock()

    def observe(self, values: Iterable[float] | np.ndarray, label: str = "") -> None:
        """Add every value in ``values`` under ``label``."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            return
        # bucket i counts values <= bounds[i] (Prometheus' "le"); the last one is +Inf.
        idx = np.searchsorted(self.bounds, arr, side="left")
        counts = np.bincount(idx, minlength=self.bounds.size + 1)
        with np.errstate(over="ignore"):  # samples near the float limit: the running sum may be +Inf
            total = float(arr.sum())
        with self._lock:
            series = self._series_of(label)
            series[0][:] += counts
            series[1][0] += total

    def observe_counts(self, counts: Iterable[tuple[float, int]], label: str = "") -> None:
        """Add ``count`` values equal to ``value`` for each (value, count): what ``observe`` of them would add."""
        bounds = self._bounds
        add = [(bisect.bisect_left(bounds, value), value, count) for value, count in counts if count]
        with self._lock:
            series = self._series_of(label)
            for i, value, count in add:
                series[0][i] += count
                series[1][0] += value * count

    def _series_of(self, label: str) -> tuple[np.ndarray, list[float]]:
        # (bucket counts, [sum]) of ``label``, made on its first observation; with self._lock held
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = (np.zeros(self.bounds.size + 1, dtype=np.int64), [0.0])
        return series

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = [(k, c.copy(), s[0]) for k, (c, s) in self._series.items()]
        for label, counts, total in snapshot:
            cumulative = np.cumsum(counts)
            buckets = [(_le(b), float(n)) for b, n in zip(self.bounds, cumulative[:-1])]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric([label], buckets, total)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])

    def clear(self) -> None:
        """Forget every series (tests)."""
        with self._lock:
            self._series.clear()


def _le(bound: float) -> str:
    return repr(float(bound))


trial_values = _BulkHistogram(
    "studyhall_trial_value", "Objective values of completed trials (first objective).", VALUE_BUCKETS
)
example_scores = _BulkHistogram("studyhall_example_score", "Per-example scores told with trials.", SCORE_BUCKETS)
llm_latency = _BulkHistogram("studyhall_llm_latency_seconds", "Latency of LLM calls made by trials.", LATENCY_BUCKETS)
for _h in (trial_values, example_scores, llm_latency):
    registry.register(_h)

trials_total = Counter("studyhall_trials", "Trials told, by final state.", ["study", "state"], registry=registry)
failures_total = Counter(
    "studyhall_trial_failures",
    "Failed trials, by reason (error, timeout, crash, stale...).",
    ["study", "reason"],
    registry=registry,
)
llm_calls_total = Counter("studyhall_llm_calls", "LLM calls made by trials.", ["study"], registry=registry)
llm_429_total = Counter(
    "studyhall_llm_rate_limited", "LLM calls answered 429 (rate limited).", ["study"], registry=registry
)
llm_retries_total = Counter("studyhall_llm_retries", "LLM call retries.", ["study"], registry=registry)
crashes_total = Counter(
    "studyhall_pool_crashes", "Worker processes that died under a trial.", ["study"], registry=registry
)
timeouts_total = Counter(
    "studyhall_trial_timeouts", "Trials killed for running past trial_timeout.", ["study"], registry=registry
)

_CRASH = ("crash", "crashed")
_TIMEOUT = ("timeout", "timed_out")


def count_crash(study: str = "", n: int = 1) -> None:
    """Count worker crashes that no told trial reports (a trial told with failure="crash" counts itself)."""
    crashes_total.labels(study).inc(n)


def count_timeout(study: str = "", n: int = 1) -> None:
    """Count timeouts that no told trial reports (a trial told with failure="timeout" counts itself)."""
    timeouts_total.labels(study).inc(n)


def count_llm(study: str = "", *, calls: float = 0, rate_limited: float = 0, retries: float = 0) -> None:
    """Count LLM calls, 429s and retries made outside a told trial."""
    if calls:
        llm_calls_total.labels(study).inc(calls)
    if rate_limited:
        llm_429_total.labels(study).inc(rate_limited)
    if retries:
        llm_retries_total.labels(study).inc(retries)


def after_tell(
    study: str,
    state: TrialState,
    values: Sequence[float] | None,
    rows: Sequence[tuple[str, Mapping[str, Any], Any]],
    attrs: Mapping[str, Any],
) -> None:
    """Update the registry for one told trial (a few array operations)."""
    trials_total.labels(study, state.name.lower()).inc()
    if values:
        trial_values.observe(values[:1], study)
    retries = 0.0
    for name, summary, samples in rows:
        if samples is None:
            continue
        if name == SCORE:
            _observe(example_scores, samples, summary, study)
        elif name == LATENCY:
            _observe(llm_latency, samples, summary, study)
        elif name == LLM_ATTEMPTS:  # each call's attempts: everything past the first is a retry
            retries += float(np.maximum(np.asarray(samples, dtype=np.float64) - 1.0, 0.0).sum())
    if retries and not any(k in attrs for k in LLM_RETRIES):
        llm_retries_total.labels(study).inc(retries)
    failure = attrs.get("failure")
    if state.name == "FAIL":
        failures_total.labels(study, str(failure or "error")).inc()
        if failure in _CRASH:
            crashes_total.labels(study).inc()
        elif failure in _TIMEOUT:
            timeouts_total.labels(study).inc()
    for keys, counter in ((LLM_CALLS, llm_calls_total), (LLM_429, llm_429_total), (LLM_RETRIES, llm_retries_total)):
        for key in keys:
            v = attrs.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                counter.labels(study).inc(v)
                break


def _observe(hist: _BulkHistogram, samples: Any, summary: Mapping[str, Any], label: str) -> None:
    # A Wilson interval means every sample is 0 or 1 (optimizer/study/_summary.py): its count
    # and mean, ones / n, are the whole distribution, without another pass over the samples.
    if summary.get("ci_method") == "wilson":
        n = int(summary["n"])
        ones = round(summary["mean"] * n)  # exact: mean = ones / n, off by far less than 0.5 below 2**50
        hist.observe_counts(((0.0, n - ones), (1.0, ones)), label)
    else:
        hist.observe(samples, label)
