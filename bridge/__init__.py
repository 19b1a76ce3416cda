"""Everything that crosses a process or network boundary.

The worker pool (``WorkerPool``, in ``bridge.pool``), the LLM client and the fake
OpenAI-compatible provider (``LLMClient``, ``FakeProvider``, in ``bridge.llm``), the
rate limiter (``RateLimiter``), fallbacks, and the per-task telemetry recorder.
Only the exceptions load at once; every other name loads on first access, so a
pool worker that only runs a task never imports httpx, and nothing here imports
SQLAlchemy until a limiter or cache is given a storage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studyhall.bridge._errors import (
    ChannelError,
    FallbackError,
    InvalidRequest,
    LLMTimeout,
    PoolClosed,
    ProviderError,
    RateLimited,
    RateLimitTimeout,
    RestartStorm,
    SerializationError,
    StudyhallError,
    TaskTimeout,
    WorkerCrashed,
)

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "Completion": "studyhall.bridge.llm._completion",
    "Decision": "studyhall.bridge.ratelimit",
    "FakeProvider": "studyhall.bridge.llm._fake",
    "LLMClient": "studyhall.bridge.llm._client",
    "Limit": "studyhall.bridge.ratelimit",
    "PoolTimeouts": "studyhall.bridge.pool._core",
    "RateLimiter": "studyhall.bridge.ratelimit",
    "TaskRecorder": "studyhall.bridge._telemetry",
    "WorkerPool": "studyhall.bridge.pool._pool",
    "current_recorder": "studyhall.bridge._telemetry",
    "recording": "studyhall.bridge._telemetry",
    "with_fallbacks": "studyhall.bridge._fallbacks",
    # The worker's own module, not the pool's front: a task in a worker asks for it.
    "worker_channel": "studyhall.bridge.pool._worker",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge._fallbacks import with_fallbacks
    from studyhall.bridge._telemetry import TaskRecorder, current_recorder, recording
    from studyhall.bridge.llm._client import LLMClient
    from studyhall.bridge.llm._completion import Completion
    from studyhall.bridge.llm._fake import FakeProvider
    from studyhall.bridge.pool._core import PoolTimeouts
    from studyhall.bridge.pool._pool import WorkerPool
    from studyhall.bridge.pool._worker import worker_channel
    from studyhall.bridge.ratelimit import Decision, Limit, RateLimiter


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
    "ChannelError",
    "Completion",
    "Decision",
    "FakeProvider",
    "FallbackError",
    "InvalidRequest",
    "LLMClient",
    "LLMTimeout",
    "Limit",
    "PoolClosed",
    "PoolTimeouts",
    "ProviderError",
    "RateLimitTimeout",
    "RateLimited",
    "RateLimiter",
    "RestartStorm",
    "SerializationError",
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
