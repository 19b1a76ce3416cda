"""Study-wide telemetry: Prometheus metrics, study distributions and optuna-dashboard notes.

::

    Study.tell ──> before_tell: the failed trial's last steps -> user_attr "trace";
                   a dashboard note written in the telemetry transaction
               ──> after_tell:  registry histograms (values, scores, LLM latency)
                                and counters (trials by state, LLM calls, 429s,
                                retries, crashes, timeouts)
    GET /metrics ──> generate_latest(registry)        (the HTTP service serves it)
    study.metrics("score") ──> StudyMetrics           (exact, from the raw samples)

Everything is aggregated in the process that tells (the parent of a worker pool),
so there are no multiprocess files. Histograms take a whole trial's samples in
one numpy call: a tell with 1,000 scores costs one ``searchsorted``, not 1,000
``observe`` calls.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from studyhall.optimizer import events
from studyhall.optimizer.study._summary import FIELDS, Summary, summarize
from studyhall.storage import Storage

if TYPE_CHECKING:
    from optuna.trial import TrialState

    from studyhall.optimizer.study._study import Study

__all__ = [
    "StudyMetrics",
    "Summary",
    "count_crash",
    "count_llm",
    "count_timeout",
    "registry",
    "study_metrics",
    "summarize",
    "trial_note",
]

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
        total = float(arr.sum())
        with self._lock:
            series = self._series.get(label)
            if series is None:
                series = self._series[label] = (np.zeros(self.bounds.size + 1, dtype=np.int64), [0.0])
            series[0][:] += counts
            series[1][0] += total

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


trial_values = _BulkHistogram("studyhall_trial_value", "Objective values of completed trials (first objective).", VALUE_BUCKETS)
example_scores = _BulkHistogram("studyhall_example_score", "Per-example scores told with trials.", SCORE_BUCKETS)
llm_latency = _BulkHistogram("studyhall_llm_latency_seconds", "Latency of LLM calls made by trials.", LATENCY_BUCKETS)
for _h in (trial_values, example_scores, llm_latency):
    registry.register(_h)

trials_total = Counter("studyhall_trials", "Trials told, by final state.", ["study", "state"], registry=registry)
failures_total = Counter("studyhall_trial_failures", "Failed trials, by reason (error, timeout, crash, stale...).",
                         ["study", "reason"], registry=registry)
llm_calls_total = Counter("studyhall_llm_calls", "LLM calls made by trials.", ["study"], registry=registry)
llm_429_total = Counter("studyhall_llm_rate_limited", "LLM calls answered 429 (rate limited).", ["study"], registry=registry)
llm_retries_total = Counter("studyhall_llm_retries", "LLM call retries.", ["study"], registry=registry)
crashes_total = Counter("studyhall_pool_crashes", "Worker processes that died under a trial.", ["study"], registry=registry)
timeouts_total = Counter("studyhall_trial_timeouts", "Trials killed for running past trial_timeout.", ["study"], registry=registry)

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


# ---- hooks called by Study.tell -----------------------------------------------------------


def before_tell(
    study_id: int,
    trial_id: int,
    number: int,
    state: TrialState,
    attrs: dict[str, Any],
    rows: Sequence[tuple[str, Mapping[str, Any], Any]],
) -> Callable[[sa.Connection], None] | None:
    """Add a failed trial's ``trace``; return the dashboard-note write for the telemetry transaction."""
    steps = events.trial_steps(trial_id, clear=True)
    if state.name == "FAIL" and steps and "trace" not in attrs:
        attrs["trace"] = steps
    if not rows:
        return None
    body = trial_note(number, rows, attrs)
    return lambda conn: _write_note(conn, study_id, trial_id, body)


def after_tell(study: str, state: TrialState, values: Sequence[float] | None,
               rows: Sequence[tuple[str, Mapping[str, Any], Any]], attrs: Mapping[str, Any]) -> None:
    """Update the registry for one told trial (a few array operations)."""
    trials_total.labels(study, state.name.lower()).inc()
    if values:
        trial_values.observe(values[:1], study)
    retries = 0.0
    for name, _, samples in rows:
        if samples is None:
            continue
        if name == SCORE:
            example_scores.observe(samples, study)
        elif name == LATENCY:
            llm_latency.observe(samples, study)
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


# ---- optuna-dashboard notes ---------------------------------------------------------------

NOTE_PART = 2045  # optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH


def trial_note(number: int, rows: Sequence[tuple[str, Mapping[str, Any], Any]], attrs: Mapping[str, Any]) -> str:
    """The markdown note optuna-dashboard shows for a trial: its distributions as a table."""
    lines = [f"### Trial {number}: distributions", "", "| metric | " + " | ".join(FIELDS) + " |",
             "|---" * (len(FIELDS) + 1) + "|"]
    for name, summary, _ in rows:
        cells = [_cell(summary.get(k)) for k in FIELDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = {k: v for k, v in attrs.items() if k.startswith("llm.") and not any(k.startswith(n + ".") for n, _, _ in rows)}
    if totals:
        lines += ["", ", ".join(f"{k}: {_cell(v)}" for k, v in sorted(totals.items()))]
    if attrs.get("error"):
        lines += ["", f"**error**: {str(attrs['error'])[:300]}"]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def _write_note(conn: sa.Connection, study_id: int, trial_id: int, body: str) -> None:
    """Store a trial note exactly as ``optuna_dashboard.save_note`` does, in the caller's transaction.

    The note is study system attrs ``dashboard:{trial_id}:note_ver`` and
    ``dashboard:{trial_id}:note_str:{i}`` (2,045-character parts). A note someone
    saved while the trial ran is kept, with the table appended below it.
    """
    t, read_version, insert = _note_statements()
    ver_key = f"dashboard:{trial_id}:note_ver"
    prefix = f"dashboard:{trial_id}:note_str:"
    ver = conn.execute(read_version, {"study_id": study_id, "key": ver_key}).scalar_one_or_none()
    version = 1
    if ver is not None:  # rare: keep the existing note's text
        part_rows = sa.select(t.c.key, t.c.value_json).where(t.c.study_id == study_id, t.c.key.startswith(prefix, autoescape=True))
        parts: dict[str, str] = dict(conn.execute(part_rows).all())
        old = "".join(json.loads(parts[f"{prefix}{i}"]) for i in range(len(parts)) if f"{prefix}{i}" in parts)
        body = (old.rstrip() + "\n\n" + body) if old.strip() else body
        version = int(json.loads(ver)) + 1
        conn.execute(sa.delete(t).where(t.c.study_id == study_id, sa.or_(t.c.key == ver_key, t.c.key.in_(list(parts)))))
    chunks = [body[i:i + NOTE_PART] for i in range(0, len(body), NOTE_PART)] or [""]
    conn.execute(
        insert,
        [{"study_id": study_id, "key": ver_key, "value_json": json.dumps(version)}]
        + [{"study_id": study_id, "key": f"{prefix}{i}", "value_json": json.dumps(c)} for i, c in enumerate(chunks)],
    )


@functools.cache
def _note_statements() -> tuple[sa.Table, sa.Select[Any], sa.Insert]:
    # Built once: every told trial with a distribution writes a note.
    from optuna.storages._rdb import models

    t: sa.Table = models.StudySystemAttributeModel.__table__
    read_version = sa.select(t.c.value_json).where(t.c.study_id == sa.bindparam("study_id"), t.c.key == sa.bindparam("key"))
    return t, read_version, sa.insert(t)


# ---- distributions across a study -----------------------------------------------------------


@dataclass(frozen=True)
class StudyMetrics:
    """A study's distributions: its trial values and ``name`` / LLM latency pooled over trials.

    ``values`` has one Summary per objective (None without completed trials);
    ``pooled`` and ``latency`` pool every trial's raw samples exactly;
    ``per_trial`` summarises ``name`` for each trial number that has samples.
    """

    name: str
    n_trials: int
    n_complete: int
    values: list[Summary | None]
    pooled: Summary | None
    latency: Summary | None
    per_trial: dict[int, Summary] = field(default_factory=dict)

    @property
    def value(self) -> Summary | None:
        """The distribution of the first objective's values."""
        return self.values[0] if self.values else None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (without the per-trial summaries' histograms)."""
        return {
            "name": self.name,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "values": [s.as_dict() if s else None for s in self.values],
            self.name: self.pooled.as_dict() if self.pooled else None,
            LATENCY: self.latency.as_dict() if self.latency else None,
        }


def study_metrics(study: Study, name: str = SCORE) -> StudyMetrics:
    """The distributions of ``study`` (``Study.metrics`` calls this)."""
    from studyhall.storage._trials import read_study_samples

    st: Storage = study.storage
    n_obj = len(study.directions)
    counts, by_objective = _values(st, study._study_id, n_obj)
    samples = read_study_samples(st, study._study_id, name)
    latency = read_study_samples(st, study._study_id, LATENCY) if name != LATENCY else samples
    per_trial = {n: summarize(x) for n, x in sorted(samples.items()) if x.size}
    return StudyMetrics(
        name=name,
        n_trials=counts[0],
        n_complete=counts[1],
        values=[summarize(v) if len(v) else None for v in by_objective],
        pooled=_pool(samples),
        latency=_pool(latency),
        per_trial=per_trial,
    )


def _pool(by_trial: Mapping[int, np.ndarray]) -> Summary | None:
    # in trial order, so that the same study always sums to the same last bit
    parts = [by_trial[n] for n in sorted(by_trial) if by_trial[n].size]
    return summarize(np.concatenate(parts)) if parts else None


def _values(st: Storage, study_id: int, n_obj: int) -> tuple[tuple[int, int], list[list[float]]]:
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    t = models.TrialModel.__table__
    v = models.TrialValueModel.__table__

    def read(conn: sa.Connection) -> tuple[tuple[int, int], list[list[float]]]:
        total = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id)).scalar_one()
        complete = conn.execute(
            sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
        ).scalar_one()
        rows = conn.execute(
            sa.select(v.c.objective, v.c.value, v.c.value_type)
            .select_from(v.join(t, t.c.trial_id == v.c.trial_id))
            .where(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
            .order_by(t.c.number)  # a fixed order: the same study always sums to the same last bit
        )
        out: list[list[float]] = [[] for _ in range(n_obj)]
        for objective, value, value_type in rows:
            kind = getattr(value_type, "name", str(value_type))
            if kind == "FINITE" and value is not None and 0 <= objective < n_obj:
                out[objective].append(float(value))
        return (int(total), int(complete)), out

    return st.transaction(read)
