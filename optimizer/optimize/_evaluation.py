"""``Evaluation``: what an objective may return besides a float or a list of scores.

Standard library only: the worker-side trial runner imports it to read an
objective's result, and a pool worker must not load Optuna for that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Evaluation:
    """What an objective may return: a value and/or per-example scores, plus named samples.

    ``value`` defaults to the mean of ``scores``; ``metrics`` maps a name (e.g.
    ``"llm.latency_s"``) to its samples, each summarised as a distribution.
    """

    value: float | Sequence[float] | None = None
    scores: Sequence[float] | None = None
    metrics: Mapping[str, Sequence[float]] = field(default_factory=dict)
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
