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
               --attach ──> attach_report           (the same figure as an Optuna artifact; _artifacts.py)
    study.compare(a, b) ──> Comparison                (paired t-test, else Welch's; _compare.py)
    study.select(...) ──> Selection                   (the study's answer, shown everywhere; _selection.py)
    enable_otel(provider) ──> spans of trials, steps, workflows and LLM calls   (optimizer/_otel.py)
"""

from __future__ import annotations

from studyhall.optimizer._otel import disable as disable_otel
from studyhall.optimizer._otel import enable as enable_otel
from studyhall.optimizer.study._summary import Summary, summarize
from studyhall.optimizer.telemetry._artifacts import attach_report
from studyhall.optimizer.telemetry._compare import Comparison
from studyhall.optimizer.telemetry._notes import trial_note
from studyhall.optimizer.telemetry._registry import count_crash, count_llm, count_timeout, registry
from studyhall.optimizer.telemetry._selection import Selection
from studyhall.optimizer.telemetry._study import StudyMetrics, study_metrics

__all__ = [
    "Comparison",
    "Selection",
    "StudyMetrics",
    "Summary",
    "attach_report",
    "count_crash",
    "count_llm",
    "count_timeout",
    "disable_otel",
    "enable_otel",
    "registry",
    "study_metrics",
    "summarize",
    "trial_note",
]
