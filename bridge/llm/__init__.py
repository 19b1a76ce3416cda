"""LLM calls: the rate-limited, retried, cached client and a fake provider to test it against.

``LLMClient`` (``_client``) asks an OpenAI-compatible API; one call's way through
the limiter and its attempts is ``_call``, the Retry-After and backoff arithmetic
``_retry``, the token reservation ``_tokens``, the response cache ``_cache`` and
the answer ``Completion`` ``_completion``. ``FakeProvider`` (``_fake``) is a real
OpenAI-compatible HTTP server on loopback, with OpenAI-style limits.

Names load on first use (httpx, tenacity and http.server only when needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "Completion": "studyhall.bridge.llm._completion",
    "FakeProvider": "studyhall.bridge.llm._fake",
    "LLMClient": "studyhall.bridge.llm._client",
    "estimate_prompt_tokens": "studyhall.bridge.llm._tokens",
    "parse_duration": "studyhall.bridge.llm._retry",
    "retry_delay": "studyhall.bridge.llm._retry",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge.llm._client import LLMClient
    from studyhall.bridge.llm._completion import Completion
    from studyhall.bridge.llm._fake import FakeProvider
    from studyhall.bridge.llm._retry import parse_duration, retry_delay
    from studyhall.bridge.llm._tokens import estimate_prompt_tokens


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studyhall.bridge.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Completion",
    "FakeProvider",
    "LLMClient",
    "estimate_prompt_tokens",
    "parse_duration",
    "retry_delay",
]
