"""The DSPy bridge: DSPy's LM calls through studyhall's client, and MIPROv2 on a studyhall study.

``dspy_lm(client)`` is a ``dspy.LM`` whose calls go through an ``LLMClient`` (its
shared RateLimiter, retries, fallbacks and per-trial telemetry);
``optimize_dspy(program, metric, trainset, valset, lm=client)`` (or the teleprompter
``StudyhallMIPRO``) runs the whole MIPROv2-style search (proposals, bootstrapped demos,
the pruned, resumable search) and returns the compiled program. Install DSPy with
``pip install 'studyhall[dspy]'``; nothing here imports it until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "DspyMetric": "studyhall.optimizer.dspy._optimize",
    "DspyProgram": "studyhall.optimizer.dspy._optimize",
    "StudyhallEngine": "studyhall.optimizer.dspy._lm",
    "StudyhallMIPRO": "studyhall.optimizer.dspy._optimize",
    "describe_program": "studyhall.optimizer.dspy._optimize",
    "dspy_lm": "studyhall.optimizer.dspy._lm",
    "optimize_dspy": "studyhall.optimizer.dspy._optimize",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.optimizer.dspy._lm import StudyhallEngine, dspy_lm
    from studyhall.optimizer.dspy._optimize import (
        DspyMetric,
        DspyProgram,
        StudyhallMIPRO,
        describe_program,
        optimize_dspy,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studyhall.optimizer.dspy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DspyMetric",
    "DspyProgram",
    "StudyhallEngine",
    "StudyhallMIPRO",
    "describe_program",
    "dspy_lm",
    "optimize_dspy",
]
