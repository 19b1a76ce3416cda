"""The rate limiter: requests and tokens per window, checked and consumed together, with backpressure.

``RateLimiter`` (``_limiter``) is the front; ``_gcra`` holds the arithmetic (GCRA
with reserve-ahead and pauses) and ``Limit``; ``_buckets`` is where the buckets
live: this process, or a storage's ``studyhall_rate_limits`` rows (their SQL is
``studyhall.storage._buckets``).
"""

from __future__ import annotations

from studyhall.bridge.ratelimit._gcra import Limit
from studyhall.bridge.ratelimit._limiter import Decision, RateLimiter

__all__ = ["Decision", "Limit", "RateLimiter"]
