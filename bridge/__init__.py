"""Everything that crosses a process or network boundary.

The worker pool (``WorkerPool``), the LLM client (``LLMClient``), the rate limiter
(``RateLimiter``) and the fake OpenAI-compatible provider (``FakeProvider``).
Heavy modules load on first use, so a pool worker that only runs a task never
imports httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studyhall.bridge._errors import (
    InvalidRequest,
    LLMTimeout,
    PoolClosed,
    ProviderError,
    RateLimited,
    RateLimitTimeout,
    RestartStorm,
    StudyhallError,
    TaskTimeout,
    WorkerCrashed,
)
from studyhall.bridge._telemetry import TaskRecorder, current_recorder, recording

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "WorkerPool": "studyhall.bridge._pool",
    "worker_channel": "studyhall.bridge._pool",
    "RateLimiter": "studyhall.bridge._ratelimit",
    "Limit": "studyhall.bridge._ratelimit",
    "Decision": "studyhall.bridge._ratelimit",
    "LLMClient": "studyhall.bridge._llm",
    "Completion": "studyhall.bridge._llm",
    "FakeProvider": "studyhall.bridge._fake",
    "with_fallbacks": "studyhall.bridge._fallbacks",
    "FallbackError": "studyhall.bridge._fallbacks",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge._fake import FakeProvider
    from studyhall.bridge._fallbacks import FallbackError, with_fallbacks
    from studyhall.bridge._llm import Completion, LLMClient
    from studyhall.bridge._pool import WorkerPool, worker_channel
    from studyhall.bridge._ratelimit import Decision, Limit, RateLimiter


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studyhall.bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Completion",
    "Decision",
    "FakeProvider",
    "FallbackError",
    "InvalidRequest",
    "LLMClient",
    "LLMTimeout",
    "Limit",
    "PoolClosed",
    "ProviderError",
    "RateLimitTimeout",
    "RateLimited",
    "RateLimiter",
    "RestartStorm",
    "StudyhallError",
    "TaskRecorder",
    "TaskTimeout",
    "WorkerCrashed",
    "WorkerPool",
    "current_recorder",
    "recording",
    "with_fallbacks",
    "worker_channel",
]
