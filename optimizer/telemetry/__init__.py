"""Study-wide telemetry: Prometheus metrics, study distributions and optuna-dashboard notes.

::

    Study.tell ──> before_tell: the failed trial's last steps -> user_attr "trace";   _notes.py
                   a dashboard note written in the telemetry transaction
               ──> after_tell:  registry histograms (values, scores, LLM latency)  _registry.py
                                and counters (trials by state, LLM calls, 429s,
                                retries, crashes, timeouts)
    GET /metrics ──> generate_latest(registry)        (the HTTP service serves it)
    study.metrics("score") ──> StudyMetrics           (exact, from the raw samples; _study.py)
    studyhall report NAME ──> render_report           (the picture, PNG or HTML; _report.py)
"""

from __future__ import annotations

from studyhall.optimizer.study._summary import Summary, summarize
from studyhall.optimizer.telemetry._notes import trial_note
from studyhall.optimizer.telemetry._registry import count_crash, count_llm, count_timeout, registry
from studyhall.optimizer.telemetry._study import StudyMetrics, study_metrics

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
