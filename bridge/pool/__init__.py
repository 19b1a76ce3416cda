"""The worker pool: a self-healing, elastic pool of worker subprocesses with hard timeouts.

``WorkerPool`` (in ``_pool``, which draws the data flow) is the front; ``_core``
holds the state its threads share, ``_dispatch`` hands tasks to workers,
``_supervisor`` starts, watches and replaces them, ``_tasks`` is one task's
bookkeeping, ``_workers`` one worker process as the pool sees it, and ``_worker``
the worker's own side (``worker_channel()`` inside a task).

Names load on first use: a worker process imports ``_worker`` through this
package and must not pay for the pool's machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "Channel": "studyhall.bridge.pool._worker",
    "PoolState": "studyhall.bridge.pool._core",
    "PoolTimeouts": "studyhall.bridge.pool._core",
    "RemoteTraceback": "studyhall.bridge.pool._tasks",
    "WorkerPool": "studyhall.bridge.pool._pool",
    "run_inline": "studyhall.bridge.pool._tasks",
    "worker_channel": "studyhall.bridge.pool._worker",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge.pool._core import PoolState, PoolTimeouts
    from studyhall.bridge.pool._pool import WorkerPool
    from studyhall.bridge.pool._tasks import RemoteTraceback, run_inline
    from studyhall.bridge.pool._worker import Channel, worker_channel


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studyhall.bridge.pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Channel",
    "PoolState",
    "PoolTimeouts",
    "RemoteTraceback",
    "WorkerPool",
    "run_inline",
    "worker_channel",
]
