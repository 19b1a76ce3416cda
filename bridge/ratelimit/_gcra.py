"""The arithmetic of the rate limiter: GCRA over several buckets at once, with reserve-ahead and pauses.

GCRA (the generic cell rate algorithm) is a token bucket kept as a single
timestamp. Each bucket of a limit ``amount per per-seconds`` has

* an emission interval ``T = per / amount`` (seconds of refill one unit costs),
* a burst tolerance ``tau = burst * T`` (``burst`` = the capacity, the limit by default),
* a theoretical arrival time ``tat``: when the bucket would be full again.

A request of ``cost`` units may go at the earliest time ``t`` with
``max(tat, t) + cost*T - tau <= t``; going sets ``tat = max(tat, t) + cost*T``. That
is continuous refill: a bucket that is never drained below zero and regains
``amount`` units per ``per`` seconds, exactly like the provider's own limiter.

Reserve-ahead, which gives backpressure and FIFO fairness::

    acquire(cost) ──> reserve(): one atomic step over every bucket (see _buckets.py):
                        t = max(now, paused_until, earliest t of each bucket)
                        t - now > timeout?  -> RateLimitTimeout, nothing consumed
                        otherwise every bucket's tat advances as if the request
                        went at t (its slot is booked, even though t is in the future)
                 ──> sleep exactly until t (no polling), then go

Because a request that cannot go now books its slot in the future, every later
request queues behind it: a large request is never starved by a stream of small
ones, across threads, processes and hosts alike. (Booking a future slot keeps the
bucket conformant: for any interval the booked costs fit ``burst + rate * length``.)

A slot missed by more than ``REBOOK_LATE_S`` (the process was stopped, its host
cut off from the database while it slept) is not used late, on top of the slots
booked since: on waking, ``acquire`` compares the buckets' clock with its slot and
books a new one (the missed slot stays spent).

``pause(s)`` (a provider's 429 Retry-After) moves the whole schedule: nobody is
granted before ``now + s``, and requests already booked shift their slot by the
pause they did not know about, so the schedule resumes with its spacing intact
rather than as one burst.

The steps below (``reserve``, ``adjust``, ``pause``, ``available``) change a
``BucketState`` in place; where that state lives, and what makes a step atomic,
is the buckets' business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from studyhall.bridge._errors import InvalidRequest

KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
#: Default ``Limit.headroom``: this share of the window, ...
HEADROOM_SHARE = 0.1
#: ... at most this many seconds of refill, held back from the burst.
MAX_HEADROOM_S = 1.0
#: A booked slot this many seconds in the past when its request wakes is re-booked, not used.
REBOOK_LATE_S = 1.0


@dataclass(frozen=True)
class Limit:
    """One limit: ``requests`` (or ``tokens``, ``input_tokens``, ``output_tokens``) per ``per`` seconds.

    ``burst`` is the bucket's capacity (default: the limit itself). ``headroom``
    is how many seconds of refill are held back from it: requests sent on schedule
    arrive at the provider bunched up by network jitter, and a strict provider
    answers 429 to one that arrives early into an empty bucket. The default, 10% of
    ``per`` up to 1 s (1 s of a one-minute limit), absorbs that without lowering the
    steady rate, so a limit copied from the provider's docs draws no 429s. It never
    holds back the last unit of a bucket (a 1-request bucket keeps its burst of 1).
    ``headroom=0`` books exactly the published limit.
    """

    requests: float | None = None
    tokens: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    per: float = 60.0
    burst: float | None = None
    headroom: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidRequest(
                f"a Limit takes exactly one of requests=, tokens=, input_tokens=, output_tokens=; "
                f"got {given or 'none'} (use one Limit per quantity)"
            )
        if not self.amount > 0 or not math.isfinite(self.amount):
            raise InvalidRequest(f"Limit {self.kind}={self.amount!r} must be a positive number")
        if not self.per > 0 or not math.isfinite(self.per):
            raise InvalidRequest(f"Limit per={self.per!r} must be a positive number of seconds")
        if self.burst is not None and not (self.burst > 0 and math.isfinite(self.burst)):
            raise InvalidRequest(f"Limit burst={self.burst!r} must be a positive number")
        h = self.headroom
        if h is not None and (isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 <= h < self.per):
            raise InvalidRequest(
                f"Limit headroom={h!r} must be seconds of refill from 0 to per={self.per:g} (None: the default)"
            )

    @property
    def kind(self) -> str:
        """Which quantity this limit counts: requests, tokens, input_tokens or output_tokens."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def amount(self) -> float:
        """How many units the limit allows per window."""
        return float(getattr(self, self.kind))

    @property
    def capacity(self) -> float:
        """The bucket's capacity: ``burst``, else the limit per window."""
        return float(self.burst) if self.burst is not None else self.amount

    @property
    def bucket(self) -> str:
        """The bucket's key, e.g. ``requests/60s``."""
        return f"{self.kind}/{self.per:g}s"

    @property
    def interval(self) -> float:
        """Seconds of refill that one unit costs."""
        return self.per / self.amount

    @property
    def headroom_s(self) -> float:
        """Seconds of refill held back from the burst (``headroom``, else the default)."""
        if self.headroom is not None:
            return float(self.headroom)
        return min(HEADROOM_SHARE * self.per, MAX_HEADROOM_S)

    @property
    def tolerance(self) -> float:
        """GCRA's burst tolerance in seconds: the capacity's refill less the headroom (never below one unit)."""
        full = self.capacity * self.interval
        return max(full - self.headroom_s, min(full, self.interval))


class BucketState(Protocol):
    """The state of one limiter's buckets at ``now``, as a step sees it (changed in place)."""

    now: float
    tats: dict[str, float]  # bucket -> theoretical arrival time; a missing bucket is full
    paused_until: float
    pause_total: float  # seconds of pause applied so far: a booked slot moves by what came after


@dataclass
class Grant:
    """What ``reserve`` decided: whether the slot is booked, the wait until it, the pause total at booking,
    and the buckets' clock then (the slot is at ``at + wait_s`` on that clock)."""

    granted: bool
    wait_s: float
    pause_total: float
    at: float = 0.0


def reserve(s: BucketState, limits: Iterable[Limit], costs: dict[str, float], max_wait: float | None) -> Grant:
    """Book the earliest slot at which every bucket admits its cost, unless it is more than ``max_wait`` away."""
    limits = tuple(limits)
    t = max(_earliest(limits, costs, s.tats, s.now), s.paused_until)
    wait = max(0.0, t - s.now)
    if max_wait is not None and wait > max_wait:
        return Grant(False, wait, s.pause_total, s.now)
    for lim in limits:
        cost = costs.get(lim.bucket, 0.0)
        if cost > 0:
            s.tats[lim.bucket] = max(s.tats.get(lim.bucket, t), t) + cost * lim.interval
    return Grant(True, wait, s.pause_total, s.now)


def adjust(s: BucketState, limits: Iterable[Limit], deltas: dict[str, float]) -> None:
    """Consume (positive) or give back (negative) units of each bucket."""
    # Refunds give back booked time; max(tat, now) keeps a full bucket full.
    for lim in limits:
        d = deltas.get(lim.bucket, 0.0)
        if d:
            s.tats[lim.bucket] = max(s.tats.get(lim.bucket, s.now), s.now) + d * lim.interval


def pause(s: BucketState, limits: Iterable[Limit], seconds: float) -> None:
    """Grant nothing before ``now + seconds``; every booked slot moves by the pause added."""
    until = s.now + seconds
    if until <= s.paused_until:
        return
    delta = until - max(s.paused_until, s.now)
    s.paused_until = until
    s.pause_total += delta
    for lim in limits:
        s.tats[lim.bucket] = max(s.tats.get(lim.bucket, s.now), s.now) + delta


def available(s: BucketState, limits: Iterable[Limit]) -> dict[str, float]:
    """Units each bucket could grant now (negative: that much is booked ahead)."""
    return {
        lim.bucket: (lim.tolerance - (max(s.tats.get(lim.bucket, s.now), s.now) - s.now)) / lim.interval
        for lim in limits
    }


def _earliest(limits: Iterable[Limit], costs: dict[str, float], tats: dict[str, float], now: float) -> float:
    """The earliest time at which every bucket admits its cost (never before ``now``)."""
    t = now
    for lim in limits:
        cost = costs.get(lim.bucket, 0.0)
        if cost <= 0:
            continue
        tat = tats.get(lim.bucket, now)
        t = max(t, max(tat, now) + cost * lim.interval - lim.tolerance)
    return t
