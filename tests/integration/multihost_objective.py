"""The objective of the multi-host test: two parameters, a shared rate limit, an LLM-like pause.

Each run appends JSON lines to ``$MULTIHOST_LOG_DIR/<host>.jsonl``: ``start`` (its
parameters), ``send`` (when the limiter let it go) and ``done``, so the test can tell
which host ran what and check the limit across hosts. ``$MULTIHOST_LIMIT`` is
``requests/per/burst`` of the shared limiter, on ``$STUDYHALL_STORAGE``.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

_limiter: Any = None


def _log(event: str, **fields: Any) -> None:
    path = os.path.join(os.environ["MULTIHOST_LOG_DIR"], f"{os.environ['MULTIHOST_HOST']}.jsonl")
    line = json.dumps({"event": event, "t": time.time(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of one short line: appends from processes do not interleave
    finally:
        os.close(fd)


def limiter() -> Any:
    """The shared limiter, one per worker process (as an LLM client would hold it)."""
    global _limiter
    if _limiter is None:
        from studyhall.bridge import Limit, RateLimiter

        requests, per, burst = (float(v) for v in os.environ["MULTIHOST_LIMIT"].split("/"))
        _limiter = RateLimiter(
            "multihost-llm",
            limits=[Limit(requests=requests, per=per, burst=burst)],
            storage=os.environ["STUDYHALL_STORAGE"],
        )
    return _limiter


def objective(trial: Any) -> float:
    """Suggest x and y, wait for the shared limit, 'call the LLM' (sleep 0.2-0.5 s)."""
    x = trial.suggest_float("x", 0, 1)
    y = trial.suggest_int("y", 0, 1_000_000)
    _log("start", number=trial.number, x=x, y=y, retry_of=trial.user_attrs.get("retry_of"))
    limiter().acquire(timeout=30)
    _log("send", number=trial.number)
    time.sleep(random.uniform(0.2, 0.5))
    _log("done", number=trial.number)
    return x + y / 1_000_000
