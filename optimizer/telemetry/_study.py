"""A study's distributions: its trial values, and one metric (``score``) and the LLM latency pooled over trials.

Exact, not merged histograms: every trial's raw samples are stored
(``studyhall_trial_metrics.samples``), so pooling concatenates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from studyhall.optimizer.study._summary import Summary, summarize
from studyhall.optimizer.telemetry._registry import LATENCY, SCORE
from studyhall.storage import Storage
from studyhall.storage._studies import complete_values
from studyhall.storage._trials import read_study_samples

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study


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
    st: Storage = study.storage
    n_obj = len(study.directions)
    n_trials, n_complete, by_objective = complete_values(st, study._study_id, n_obj)
    samples = read_study_samples(st, study._study_id, name)
    latency = read_study_samples(st, study._study_id, LATENCY) if name != LATENCY else samples
    per_trial = {n: summarize(x) for n, x in sorted(samples.items()) if x.size}
    return StudyMetrics(
        name=name,
        n_trials=n_trials,
        n_complete=n_complete,
        values=[summarize(v) if len(v) else None for v in by_objective],
        pooled=_pool(samples),
        latency=_pool(latency),
        per_trial=per_trial,
    )


def _pool(by_trial: Mapping[int, np.ndarray]) -> Summary | None:
    # in trial order, so that the same study always sums to the same last bit
    parts = [by_trial[n] for n in sorted(by_trial) if by_trial[n].size]
    return summarize(np.concatenate(parts)) if parts else None
