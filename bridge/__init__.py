"""Everything that crosses a process or network boundary.

The worker pool (``WorkerPool``), the LLM client (``LLMClient``), the rate limiter
(``RateLimiter``) and the fake OpenAI-compatible provider (``FakeProvider``).
Heavy modules load on first use, so a pool worker that only runs a task never
imports httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bridge._errors import (
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
from bridge._telemetry import TaskRecorder, current_recorder, recording

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "WorkerPool": "bridge._pool",
    "worker_channel": "bridge._pool",
    "RateLimiter": "bridge._ratelimit",
    "Limit": "bridge._ratelimit",
    "Decision": "bridge._ratelimit",
    "LLMClient": "bridge._llm",
    "Completion": "bridge._llm",
    "FakeProvider": "bridge._fake",
    "with_fallbacks": "bridge._fallbacks",
    "FallbackError": "bridge._fallbacks",
}

if TYPE_CHECKING:  # pragma: no cover
    from bridge._fake import FakeProvider
    from bridge._fallbacks import FallbackError, with_fallbacks
    from bridge._llm import Completion, LLMClient
    from bridge._pool import WorkerPool, worker_channel
    from bridge._ratelimit import Decision, Limit, RateLimiter


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
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
