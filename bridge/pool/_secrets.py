"""Secrets that travel to pool workers in memory only, never inside a pickle.

An object holding a secret (``LLMClient``'s API key) registers it here and
pickles only a random id. A ``WorkerPool`` sends every secret registered in its
process to each worker over the worker's own socket, at start (with CONFIG,
before the initializer unpickles anything) and again before a task whenever new
ones were registered since; the worker keeps them in this module, in memory, and
the unpickled object looks its id up here. A pickle stored, logged or written to
a database thus carries an id that means nothing outside this process tree.

Standard library only: a worker imports it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class Holder(Protocol):
    """What registers a secret: anything with the secret's value (None once it has none)."""

    @property
    def value(self) -> str | None: ...


_lock = threading.RLock()  # a holder's value may itself look up (a restored secret)
# This process's own secrets, alive as long as the objects that hold them.
_live: weakref.WeakValueDictionary[str, Holder] = weakref.WeakValueDictionary()
# Secrets this process was sent by the pool that started it.
_received: dict[str, str] = {}
# Bumped on every change: a pool resends only when a worker's copy is older.
_generation = 0


def register(holder: Holder) -> str:
    """Register ``holder``'s secret for pool workers; the random id to pickle in its place."""
    global _generation
    secret_id = os.urandom(16).hex()  # not the secrets module: a worker imports this one cheaply
    with _lock:
        _live[secret_id] = holder
        _generation += 1
    return secret_id


def lookup(secret_id: str) -> str | None:
    """The secret of ``secret_id`` if this process has it (its own, or sent by its pool), else None."""
    with _lock:
        holder = _live.get(secret_id)
        if holder is not None and holder.value is not None:
            return holder.value
        return _received.get(secret_id)


def generation() -> int:
    """A number that changes whenever a secret is registered or received."""
    return _generation


def snapshot() -> tuple[int, dict[str, str]]:
    """``(generation, {id: secret})``: every secret this process could hand its workers."""
    with _lock:
        found = {k: h.value for k, h in _live.items() if h.value is not None}
        return _generation, {**_received, **found}


def receive(sent: dict[str, str]) -> None:
    """Keep the secrets a pool sent this worker (in memory only)."""
    global _generation
    if not sent:
        return
    with _lock:
        _received.update(sent)
        _generation += 1
