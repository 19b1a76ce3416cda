"""Where a limiter's buckets live, and what makes one step on them atomic.

* In this process (``storage=None``): one ``MemoryBuckets`` state per limiter
  name, shared by every RateLimiter of that name, a lock around each step, time
  from ``time.monotonic()``.
* In a storage: ``studyhall.storage._buckets.SqlBuckets``, one database
  transaction per step over the rows locked FOR UPDATE, time from the database's
  clock, shared by every process and host on that database.

Both run a step of ``_gcra`` (``apply``) and read the pause (``pause_state``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from studyhall.bridge.ratelimit._gcra import BucketState, Limit

if TYPE_CHECKING:
    from studyhall.storage import Storage

T = TypeVar("T")


class Buckets(Protocol):
    """One limiter's buckets, wherever they live."""

    def apply(self, step: Callable[[BucketState], T]) -> T:
        """Run ``step`` on the buckets' state at this instant, atomically; its result."""
        ...

    def pause_state(self) -> tuple[float, float, float]:
        """``(now, paused_until, pause_total)`` on the buckets' clock."""
        ...


class _MemoryState:
    """The buckets of one limiter name in this process (a ``BucketState``), and their lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0.0
        self.tats: dict[str, float] = {}
        self.paused_until = 0.0
        self.pause_total = 0.0


_states: weakref.WeakValueDictionary[str, _MemoryState] = weakref.WeakValueDictionary()
_states_lock = threading.Lock()


class MemoryBuckets:
    """The buckets of the limiter ``name`` in this process; every limiter of that name shares them."""

    def __init__(self, name: str) -> None:
        with _states_lock:
            state = _states.get(name)
            if state is None:
                state = _states[name] = _MemoryState()
        self.state = state  # held, so that the shared state lives as long as a limiter uses it

    def apply(self, step: Callable[[BucketState], T]) -> T:
        """Run ``step`` under the lock, at ``time.monotonic()``."""
        s = self.state
        with s.lock:
            s.now = time.monotonic()
            return step(s)

    def pause_state(self) -> tuple[float, float, float]:
        """``(now, paused_until, pause_total)``."""
        s = self.state
        with s.lock:
            return time.monotonic(), s.paused_until, s.pause_total


def storage_buckets(name: str, store: Storage, limits: Sequence[Limit]) -> Buckets:
    """The buckets of the limiter ``name`` in ``store`` (its rows are storage's business)."""
    from studyhall.storage._buckets import BucketSpec, SqlBuckets

    return SqlBuckets(store, name, [BucketSpec(lim.bucket, lim.capacity, lim.per) for lim in limits])
