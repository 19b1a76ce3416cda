"""RateLimiter: requests AND tokens per window, with backpressure, shared by processes and hosts.

``acquire`` books a slot on every bucket at once and sleeps until it (the
arithmetic, GCRA with reserve-ahead, is drawn in ``_gcra.py``); a pause taken
while it sleeps moves its slot. The buckets live in this process or, given a
storage, in the database, shared by every process and host on it (``_buckets.py``).

Example:
    >>> lim = RateLimiter("openai:gpt-4o-mini", rpm=500, tpm=200_000)
    >>> waited = lim.acquire(tokens=1200, timeout=30.0)
    >>> lim.adjust(tokens=-200)          # the call used 200 tokens fewer than reserved
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studyhall.bridge._errors import InvalidRequest, RateLimitTimeout
from studyhall.bridge.ratelimit import _gcra
from studyhall.bridge.ratelimit._buckets import Buckets, MemoryBuckets, storage_buckets
from studyhall.bridge.ratelimit._gcra import REBOOK_LATE_S, Grant, Limit

if TYPE_CHECKING:
    from studyhall.storage import Storage


@dataclass(frozen=True)
class Decision:
    """What :meth:`RateLimiter.try_acquire` decided; truthy when allowed."""

    allowed: bool
    retry_after_s: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


class RateLimiter:
    """Requests and tokens per window, checked and consumed together, with backpressure.

    Args:
        name: what the limit is for, e.g. ``"openai:gpt-4o-mini"``; limiters of the
            same name on the same backend share one limit.
        rpm: requests per minute (shorthand for ``Limit(requests=rpm, per=60)``).
        tpm: tokens per minute (shorthand for ``Limit(tokens=tpm, per=60)``).
        limits: any further limits (other windows, input/output tokens).
        storage: None for this process only; a Storage or URL to share the limit
            with every process and host on that database.

    Raises:
        InvalidRequest: no limit given, or two limits on the same bucket.

    Example:
        >>> lim = RateLimiter("gpt", rpm=500, tpm=200_000, storage="sqlite:///studyhall.db")  # doctest: +SKIP
        >>> lim.acquire(tokens=1200, timeout=30.0)  # doctest: +SKIP
        0.0
    """

    def __init__(
        self,
        name: str,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        limits: Iterable[Limit] = (),
        storage: Storage | str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 255:
            raise InvalidRequest(f"a RateLimiter name must be a non-empty string of <= 255 chars; got {name!r}")
        all_limits = list(limits)
        if rpm is not None:
            all_limits.insert(0, Limit(requests=rpm, per=60.0))
        if tpm is not None:
            all_limits.insert(1 if rpm is not None else 0, Limit(tokens=tpm, per=60.0))
        if not all_limits:
            raise InvalidRequest(f"RateLimiter({name!r}) needs at least one limit: rpm=, tpm= or limits=[Limit(...)]")
        buckets = [lim.bucket for lim in all_limits]
        dupes = sorted({b for b in buckets if buckets.count(b) > 1})
        if dupes:
            raise InvalidRequest(f"RateLimiter({name!r}) has two limits on the same bucket: {', '.join(dupes)}")
        self.name = name
        self.limits: tuple[Limit, ...] = tuple(all_limits)
        #: Requests of this object whose slot passed while they slept (re-booked, not sent late).
        self.rebooked = 0
        self.storage: Storage | None
        self._buckets: Buckets
        if storage is None:
            self.storage = None
            self._buckets = MemoryBuckets(name)
        else:
            from studyhall.storage import connect

            self.storage = connect(storage)
            self._buckets = storage_buckets(name, self.storage, self.limits)

    def __repr__(self) -> str:
        where = "this process" if self.storage is None else repr(self.storage)
        limits = ", ".join(f"{lim.amount:g} {lim.kind}/{lim.per:g}s" for lim in self.limits)
        return f"RateLimiter({self.name!r}, {limits}, storage={where})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Name, limits and the storage URL: the copy shares the database's buckets.
        url = None if self.storage is None else self.storage.url
        return (_rebuild, (self.name, self.limits, url))

    # ------------------------------------------------------------ helpers

    def _costs(self, requests: float, tokens: float, input_tokens: float, output_tokens: float) -> dict[str, float]:
        given = {"requests": requests, "tokens": tokens, "input_tokens": input_tokens, "output_tokens": output_tokens}
        for kind, v in given.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidRequest(f"{kind}={v!r} must be a non-negative number")
        costs = {lim.bucket: float(given[lim.kind]) for lim in self.limits}
        for lim in self.limits:
            if costs[lim.bucket] > lim.capacity:
                raise InvalidRequest(
                    f"a request of {costs[lim.bucket]:g} {lim.kind} can never fit {self.name!r}'s "
                    f"{lim.bucket} bucket of capacity {lim.capacity:g}; split the request or raise the limit"
                )
        return costs

    def _timeout_error(self, costs: dict[str, float], timeout: float | None, wait: float) -> RateLimitTimeout:
        want = ", ".join(f"{v:g} {b}" for b, v in costs.items() if v)
        return RateLimitTimeout(
            f"rate limiter {self.name!r} could not grant {want or 'the request'} within {timeout}s "
            f"(the next free slot is {wait:.2f}s away); raise the timeout, lower the concurrency "
            "or raise the limit"
        )

    def _refund(self, costs: dict[str, float]) -> None:
        self._buckets.apply(lambda s: _gcra.adjust(s, self.limits, {b: -c for b, c in costs.items()}))

    def _reserve(self, costs: dict[str, float], max_wait: float | None) -> Grant:
        return self._buckets.apply(lambda s: _gcra.reserve(s, self.limits, costs, max_wait))

    def _due(
        self,
        booking: _Booking,
        state: tuple[float, float, float],
        costs: dict[str, float],
        start: float,
        timeout: float | None,
    ) -> bool:
        """Woken at its slot: True to go now; False after moving it (a pause since, or a re-booking).

        ``state`` is the buckets' ``(now, paused_until, pause_total)`` read on waking.
        """
        now, _, total = state
        extra = total - booking.pause_total
        if extra > 0:  # a pause taken while it slept moves its slot
            booking.pause_total = total
            booking.slot += extra
            booking.target += extra
            if timeout is not None and booking.target - start > timeout:
                raise self._timeout_error(costs, timeout, booking.target - time.monotonic())
            return False
        if now - booking.slot <= REBOOK_LATE_S:
            return True
        # Its slot passed long ago (this process was stopped, or its host cut off, while it
        # slept): going now would land on top of the slots booked since. It is spent; book anew.
        booking.held = False
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        grant = self._reserve(costs, left)
        if not grant.granted:
            raise self._timeout_error(costs, timeout, grant.wait_s)
        booking.held = True
        booking.book(grant)
        self.rebooked += 1
        return grant.wait_s <= 0

    # ------------------------------------------------------------ public

    def acquire(
        self,
        tokens: float = 0,
        *,
        requests: float = 1,
        input_tokens: float = 0,
        output_tokens: float = 0,
        timeout: float | None = None,
    ) -> float:
        """Block until every bucket allows the request (first come, first served); return seconds waited.

        Raises:
            InvalidRequest: the request exceeds a bucket's capacity (it could never go).
            RateLimitTimeout: it could not be granted within ``timeout`` seconds; nothing was consumed.
        """
        start = time.monotonic()
        costs = self._costs(requests, tokens, input_tokens, output_tokens)
        grant = self._reserve(costs, timeout)
        if not grant.granted:
            raise self._timeout_error(costs, timeout, grant.wait_s)
        if grant.wait_s <= 0:
            # Granted at once: a pause after this instant concerns later requests only.
            return time.monotonic() - start
        booking = _Booking(grant)
        try:
            while True:
                remaining = booking.target - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                if self._due(booking, self._buckets.pause_state(), costs, start, timeout):
                    break
        except BaseException:
            if booking.held:
                self._refund(costs)
            raise
        return time.monotonic() - start

    def try_acquire(
        self, tokens: float = 0, *, requests: float = 1, input_tokens: float = 0, output_tokens: float = 0
    ) -> Decision:
        """Take the capacity if every bucket allows it now; never waits.

        Returns:
            ``Decision(True, 0.0)``, or ``Decision(False, retry_after_s)`` when the
            earliest slot (behind every request already queued) is in the future.
        """
        costs = self._costs(requests, tokens, input_tokens, output_tokens)
        grant = self._reserve(costs, 0.0)
        return Decision(grant.granted, 0.0 if grant.granted else grant.wait_s)

    def adjust(
        self, tokens: float = 0, *, requests: float = 0, input_tokens: float = 0, output_tokens: float = 0
    ) -> None:
        """Consume (positive) or give back (negative) capacity: reconcile an estimate with actual use."""
        deltas = {"requests": requests, "tokens": tokens, "input_tokens": input_tokens, "output_tokens": output_tokens}
        for kind, v in deltas.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequest(f"adjust {kind}={v!r} must be a finite number")
        by_bucket = {lim.bucket: float(deltas[lim.kind]) for lim in self.limits}
        self._buckets.apply(lambda s: _gcra.adjust(s, self.limits, by_bucket))

    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (a provider's Retry-After); everyone sharing the limiter waits."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequest(f"pause({seconds!r}) takes a non-negative number of seconds")
        if seconds > 0:
            self._buckets.apply(lambda s: _gcra.pause(s, self.limits, float(seconds)))

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0.0 when not paused)."""
        now, until, _ = self._buckets.pause_state()
        return max(0.0, until - now)

    def available(self) -> dict[str, float]:
        """Units each bucket could grant right now (negative: that much is booked ahead)."""
        return self._buckets.apply(lambda s: _gcra.available(s, self.limits))

    async def acquire_async(
        self,
        tokens: float = 0,
        *,
        requests: float = 1,
        input_tokens: float = 0,
        output_tokens: float = 0,
        timeout: float | None = None,
    ) -> float:
        """:meth:`acquire` for asyncio: waits with ``asyncio.sleep``; cancelling gives the slot back."""
        import asyncio  # only for callers on an event loop: it costs some 20 ms to import

        start = time.monotonic()
        costs = self._costs(requests, tokens, input_tokens, output_tokens)
        # A database round trip must not block the event loop; a lock in memory is brief.
        if self.storage is not None:
            grant = await asyncio.to_thread(self._reserve, costs, timeout)
        else:
            grant = self._reserve(costs, timeout)
        if not grant.granted:
            raise self._timeout_error(costs, timeout, grant.wait_s)
        if grant.wait_s <= 0:
            return time.monotonic() - start
        booking = _Booking(grant)
        try:
            while True:
                remaining = booking.target - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                if self.storage is not None:
                    due = await asyncio.to_thread(
                        lambda: self._due(booking, self._buckets.pause_state(), costs, start, timeout)
                    )
                else:
                    due = self._due(booking, self._buckets.pause_state(), costs, start, timeout)
                if due:
                    break
        except BaseException:
            if booking.held:
                self._refund(costs)
            raise
        return time.monotonic() - start


class _Booking:
    """A slot ``acquire`` waits for: where it is on the buckets' clock and on this process's."""

    def __init__(self, grant: Grant) -> None:
        self.held = True  # its capacity is booked (given back if the wait is abandoned)
        self.book(grant)

    def book(self, grant: Grant) -> None:
        self.slot = grant.at + grant.wait_s  # on the buckets' clock (the database's, if shared)
        # From now rather than from before the booking: on a database, the booking waited
        # for the rows' lock, and counted from before it the request would go early.
        self.target = time.monotonic() + grant.wait_s
        self.pause_total = grant.pause_total


def _rebuild(name: str, limits: tuple[Limit, ...], url: str | None) -> RateLimiter:
    return RateLimiter(name, limits=limits, storage=url)


__all__ = ["Decision", "RateLimiter"]
