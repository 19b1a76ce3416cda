"""The LLM response cache: answers to identical requests, reused instead of asked again.

The key is ``joblib.hash((model, messages, params))``. The answers live in a
storage's ``studyhall_llm_cache`` (rows read and written by
``studyhall.storage._llm_cache``), shared by every worker and host on it, or
without a storage in this process's memory. Only deterministic calls
(temperature 0) are cached, since a sampled answer is meant to differ;
``cache="always"`` caches those too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from studyhall.storage import Storage

CacheMode = bool | Literal["always"]

_memory: dict[str, dict[str, Any]] = {}
_memory_lock = threading.Lock()


def cache_key(mode: CacheMode, model: str, body: Mapping[str, Any]) -> str | None:
    """The key of a request to ``model`` (its body as sent), or None when ``mode`` does not cache it."""
    if not (mode == "always" or (mode is True and body.get("temperature") == 0)):
        return None
    import joblib  # only clients that cache pay for it

    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    return str(joblib.hash((model, body["messages"], params)))


def lookup(store: Storage | None, key: str) -> dict[str, Any] | None:
    """The answer cached under ``key`` (the fields of a Completion), or None."""
    if store is None:
        with _memory_lock:
            return _memory.get(key)
    from studyhall.storage._llm_cache import cached_response

    return cached_response(store, key)


def save(store: Storage | None, key: str, model: str, answer: dict[str, Any]) -> None:
    """Cache ``answer`` under ``key``."""
    if store is None:
        with _memory_lock:
            _memory[key] = answer
        return
    from studyhall.storage._llm_cache import cache_response

    cache_response(store, key, model, answer)
