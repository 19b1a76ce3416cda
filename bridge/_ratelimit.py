"""RateLimiter: requests AND tokens per window, with backpressure, shared by processes and hosts.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as a
single timestamp). Each bucket of a limit ``amount per per-seconds`` has

* an emission interval ``T = per / amount`` (seconds of refill one unit costs),
* a burst tolerance ``tau = burst * T`` (``burst`` = the capacity, the limit by default),
* a theoretical arrival time ``tat``: when the bucket would be full again.

A request of ``cost`` units may go at the earliest time ``t`` with
``max(tat, t) + cost*T - tau <= t``; going sets ``tat = max(tat, t) + cost*T``. That
is continuous refill: a bucket that is never drained below zero and regains
``amount`` units per ``per`` seconds, exactly like the provider's own limiter.

Reserve-ahead, which gives backpressure and FIFO fairness::

    acquire(cost) ──> one atomic step over every bucket (a lock, or one database
                      transaction holding the rows FOR UPDATE):
                        t = max(now, paused_until, earliest t of each bucket)
                        t - now > timeout?  -> RateLimitTimeout, nothing consumed
                        otherwise every bucket's tat advances as if the request
                        went at t (its slot is booked, even though t is in the future)
                 ──> sleep exactly until t (no polling), then go

Because a request that cannot go now books its slot in the future, every later
request queues behind it: a large request is never starved by a stream of small
ones, across threads, processes and hosts alike. (Booking a future slot keeps the
bucket conformant: for any interval the booked costs fit ``burst + rate * length``.)

``pause(s)`` (a provider's 429 Retry-After) moves the whole schedule: nobody is
granted before ``now + s``, and requests already booked shift their slot by the
pause they did not know about, so the schedule resumes with its spacing intact
rather than as one burst.

Backends:

* ``storage=None``: this process; limiters of the same name share one state.
  Time is ``time.monotonic()``.
* ``storage=`` a :class:`storage.Storage` or URL: the rows of
  ``studyhall_rate_limits`` (one per ``(name, bucket)``; ``tat`` in the database
  clock's epoch seconds) are read ``FOR UPDATE`` (PostgreSQL, MySQL) or inside an
  IMMEDIATE transaction (SQLite), updated and committed in one transaction, with
  the database's clock, so that skewed host clocks cannot break a limit. The row
  ``(name, "pause")`` keeps the pause: ``paused_until``, and in ``tat`` the total
  seconds of pause applied so far. State survives restarts; every process and host
  on that database shares the limit.

Example:
    >>> lim = RateLimiter("openai:gpt-4o-mini", rpm=500, tpm=200_000)
    >>> waited = lim.acquire(tokens=1200, timeout=30.0)
    >>> lim.adjust(tokens=-200)          # the call used 200 tokens fewer than reserved
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studyhall.bridge._errors import InvalidRequest, RateLimitTimeout

if TYPE_CHECKING:
    import sqlalchemy as sa

    from studyhall.storage import Storage

KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
PAUSE_BUCKET = "pause"


@dataclass(frozen=True)
class Limit:
    """One limit: ``requests`` (or ``tokens``, ``input_tokens``, ``output_tokens``) per ``per`` seconds.

    ``burst`` is the bucket's capacity (default: the limit itself). Against a
    strict provider, holding back a little burst (say 95%) absorbs network jitter
    between this limiter and the provider without lowering steady throughput.
    """

    requests: float | None = None
    tokens: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    per: float = 60.0
    burst: float | None = None

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
    def tolerance(self) -> float:
        """GCRA's burst tolerance in seconds."""
        return self.capacity * self.interval


@dataclass(frozen=True)
class Decision:
    """What :meth:`RateLimiter.try_acquire` decided; truthy when allowed."""

    allowed: bool
    retry_after_s: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


# ---------------------------------------------------------------- GCRA, pure


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


def _book(limits: Iterable[Limit], costs: dict[str, float], tats: dict[str, float], t: float) -> None:
    for lim in limits:
        cost = costs.get(lim.bucket, 0.0)
        if cost > 0:
            tats[lim.bucket] = max(tats.get(lim.bucket, t), t) + cost * lim.interval


def _shift(limits: Iterable[Limit], deltas: dict[str, float], tats: dict[str, float], now: float) -> None:
    # Refunds (negative) give back booked time; max(tat, now) keeps a full bucket full.
    for lim in limits:
        d = deltas.get(lim.bucket, 0.0)
        if d:
            tats[lim.bucket] = max(tats.get(lim.bucket, now), now) + d * lim.interval


def _available(limits: Iterable[Limit], tats: dict[str, float], now: float) -> dict[str, float]:
    return {
        lim.bucket: (lim.tolerance - (max(tats.get(lim.bucket, now), now) - now)) / lim.interval
        for lim in limits
    }


@dataclass
class _Grant:
    """A booked slot: wait ``wait_s`` from ``now``; ``shift`` is the pause total at booking."""

    granted: bool
    wait_s: float
    shift: float


# ---------------------------------------------------------------- backends


class _MemoryState:
    """The state of an in-process limiter; every RateLimiter of that name shares it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}
        self.paused_until = 0.0
        self.shift = 0.0


_memory: weakref.WeakValueDictionary[str, _MemoryState] = weakref.WeakValueDictionary()
_memory_lock = threading.Lock()


class _MemoryBackend:
    def __init__(self, name: str) -> None:
        with _memory_lock:
            state = _memory.get(name)
            if state is None:
                state = _memory[name] = _MemoryState()
        self.state = state

    def reserve(self, limits: tuple[Limit, ...], costs: dict[str, float], max_wait: float | None) -> _Grant:
        s = self.state
        with s.lock:
            now = time.monotonic()
            t = max(_earliest(limits, costs, s.tats, now), s.paused_until)
            wait = max(0.0, t - now)
            if max_wait is not None and wait > max_wait:
                return _Grant(False, wait, s.shift)
            _book(limits, costs, s.tats, t)
            return _Grant(True, wait, s.shift)

    def adjust(self, limits: tuple[Limit, ...], deltas: dict[str, float]) -> None:
        s = self.state
        with s.lock:
            _shift(limits, deltas, s.tats, time.monotonic())

    def pause(self, limits: tuple[Limit, ...], seconds: float) -> None:
        s = self.state
        with s.lock:
            now = time.monotonic()
            until = now + seconds
            if until <= s.paused_until:
                return
            delta = until - max(s.paused_until, now)
            s.paused_until = until
            s.shift += delta
            for lim in limits:
                s.tats[lim.bucket] = max(s.tats.get(lim.bucket, now), now) + delta

    def pause_state(self) -> tuple[float, float, float]:
        s = self.state
        with s.lock:
            return time.monotonic(), s.paused_until, s.shift

    def available(self, limits: tuple[Limit, ...]) -> dict[str, float]:
        s = self.state
        with s.lock:
            return _available(limits, s.tats, time.monotonic())


class _StorageBackend:
    """Bucket rows in ``studyhall_rate_limits``, one transaction per decision."""

    def __init__(self, name: str, store: Storage) -> None:
        self.name = name
        self.storage = store
        from studyhall.storage._sql import db_clock_sql

        self.clock_sql = db_clock_sql(store.dialect)

    def _lock_rows(
        self, conn: sa.Connection, limits: tuple[Limit, ...]
    ) -> tuple[float, dict[str, float], float, float]:
        import sqlalchemy as sa

        from studyhall.storage import tables
        from studyhall.storage._sql import insert_ignore

        t = tables.rate_limits
        wanted = {lim.bucket for lim in limits} | {PAUSE_BUCKET}
        query = sa.select(t.c.bucket, t.c.tat, t.c.paused_until).where(t.c.name == self.name).order_by(t.c.bucket)
        # Lock first, read the clock second: waiting for the lock must not age "now".
        rows = conn.execute(query.with_for_update()).all()
        missing = wanted - {r.bucket for r in rows}
        if missing:
            now = float(conn.exec_driver_sql(self.clock_sql).scalar_one())
            by_bucket = {lim.bucket: lim for lim in limits}
            insert_ignore(
                conn,
                t,
                [
                    {
                        "name": self.name,
                        "bucket": b,
                        "capacity": by_bucket[b].capacity if b in by_bucket else 0.0,
                        "period_s": by_bucket[b].per if b in by_bucket else 0.0,
                        # A new bucket starts full; the pause row's tat counts pause seconds.
                        "tat": now if b in by_bucket else 0.0,
                        "paused_until": 0.0,
                        "updated_at": now,
                    }
                    for b in sorted(missing)
                ],
            )
            rows = conn.execute(query.with_for_update()).all()
        now = float(conn.exec_driver_sql(self.clock_sql).scalar_one())
        tats = {r.bucket: float(r.tat) for r in rows if r.bucket != PAUSE_BUCKET}
        pause = next(r for r in rows if r.bucket == PAUSE_BUCKET)
        return now, tats, float(pause.paused_until), float(pause.tat)

    def _write(
        self,
        conn: sa.Connection,
        limits: tuple[Limit, ...],
        tats: dict[str, float],
        now: float,
        pause: tuple[float, float] | None = None,
    ) -> None:
        import sqlalchemy as sa

        from studyhall.storage import tables

        t = tables.rate_limits
        stmt = (
            t.update()
            .where(t.c.name == self.name, t.c.bucket == sa.bindparam("b"))
            .values(
                tat=sa.bindparam("v_tat"),
                capacity=sa.bindparam("v_cap"),
                period_s=sa.bindparam("v_per"),
                updated_at=now,
            )
        )
        conn.execute(
            stmt,
            [{"b": lim.bucket, "v_tat": tats[lim.bucket], "v_cap": lim.capacity, "v_per": lim.per} for lim in limits],
        )
        if pause is not None:
            conn.execute(
                t.update()
                .where(t.c.name == self.name, t.c.bucket == PAUSE_BUCKET)
                .values(paused_until=pause[0], tat=pause[1], updated_at=now)
            )

    def reserve(self, limits: tuple[Limit, ...], costs: dict[str, float], max_wait: float | None) -> _Grant:
        def txn(conn: sa.Connection) -> _Grant:
            now, tats, paused_until, shift = self._lock_rows(conn, limits)
            t = max(_earliest(limits, costs, tats, now), paused_until)
            wait = max(0.0, t - now)
            if max_wait is not None and wait > max_wait:
                return _Grant(False, wait, shift)
            _book(limits, costs, tats, t)
            self._write(conn, limits, tats, now)
            return _Grant(True, wait, shift)

        return self.storage.transaction(txn)

    def adjust(self, limits: tuple[Limit, ...], deltas: dict[str, float]) -> None:
        def txn(conn: sa.Connection) -> None:
            now, tats, _, _ = self._lock_rows(conn, limits)
            _shift(limits, deltas, tats, now)
            self._write(conn, limits, tats, now)

        self.storage.transaction(txn)

    def pause(self, limits: tuple[Limit, ...], seconds: float) -> None:
        def txn(conn: sa.Connection) -> None:
            now, tats, paused_until, shift = self._lock_rows(conn, limits)
            until = now + seconds
            if until <= paused_until:
                return
            delta = until - max(paused_until, now)
            for lim in limits:
                tats[lim.bucket] = max(tats.get(lim.bucket, now), now) + delta
            self._write(conn, limits, tats, now, pause=(until, shift + delta))

        self.storage.transaction(txn)

    def pause_state(self) -> tuple[float, float, float]:
        import sqlalchemy as sa

        from studyhall.storage import tables

        t = tables.rate_limits

        def read(conn: sa.Connection) -> tuple[float, float, float]:
            row = conn.execute(
                sa.select(t.c.paused_until, t.c.tat).where(t.c.name == self.name, t.c.bucket == PAUSE_BUCKET)
            ).first()
            now = float(conn.exec_driver_sql(self.clock_sql).scalar_one())
            if row is None:
                return now, 0.0, 0.0
            return now, float(row.paused_until), float(row.tat)

        return self.storage.transaction(read)

    def available(self, limits: tuple[Limit, ...]) -> dict[str, float]:
        def read(conn: sa.Connection) -> dict[str, float]:
            now, tats, _, _ = self._lock_rows(conn, limits)
            return _available(limits, tats, now)

        return self.storage.transaction(read)


# ---------------------------------------------------------------- the limiter


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
            raise InvalidRequest(
                f"RateLimiter({name!r}) needs at least one limit: rpm=, tpm= or limits=[Limit(...)]"
            )
        buckets = [lim.bucket for lim in all_limits]
        dupes = sorted({b for b in buckets if buckets.count(b) > 1})
        if dupes:
            raise InvalidRequest(f"RateLimiter({name!r}) has two limits on the same bucket: {', '.join(dupes)}")
        self.name = name
        self.limits: tuple[Limit, ...] = tuple(all_limits)
        self.storage: Storage | None
        self._backend: _MemoryBackend | _StorageBackend
        if storage is None:
            self.storage = None
            self._backend = _MemoryBackend(name)
        else:
            from studyhall.storage import connect

            self.storage = connect(storage)
            self._backend = _StorageBackend(name, self.storage)

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
        self._backend.adjust(self.limits, {b: -c for b, c in costs.items()})

    def _extra_pause(self, booked_shift: float) -> tuple[float, float]:
        """After sleeping to a booked slot: (seconds a later pause moved it by, new pause total)."""
        _, _, shift = self._backend.pause_state()
        return max(0.0, shift - booked_shift), shift

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
        grant = self._backend.reserve(self.limits, costs, timeout)
        if not grant.granted:
            raise self._timeout_error(costs, timeout, grant.wait_s)
        if grant.wait_s <= 0:
            # Granted at once: a pause after this instant concerns later requests only.
            return time.monotonic() - start
        target = start + grant.wait_s
        shift = grant.shift
        try:
            while True:
                remaining = target - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                extra, shift = self._extra_pause(shift)
                if extra <= 0:
                    break
                target += extra
                if timeout is not None and target - start > timeout:
                    raise self._timeout_error(costs, timeout, target - time.monotonic())
        except BaseException:
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
        grant = self._backend.reserve(self.limits, costs, 0.0)
        return Decision(grant.granted, 0.0 if grant.granted else grant.wait_s)

    def adjust(
        self, tokens: float = 0, *, requests: float = 0, input_tokens: float = 0, output_tokens: float = 0
    ) -> None:
        """Consume (positive) or give back (negative) capacity: reconcile an estimate with actual use."""
        deltas = {"requests": requests, "tokens": tokens, "input_tokens": input_tokens, "output_tokens": output_tokens}
        for kind, v in deltas.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequest(f"adjust {kind}={v!r} must be a finite number")
        self._backend.adjust(self.limits, {lim.bucket: float(deltas[lim.kind]) for lim in self.limits})

    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (a provider's Retry-After); everyone sharing the limiter waits."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequest(f"pause({seconds!r}) takes a non-negative number of seconds")
        if seconds > 0:
            self._backend.pause(self.limits, float(seconds))

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0.0 when not paused)."""
        now, until, _ = self._backend.pause_state()
        return max(0.0, until - now)

    def available(self) -> dict[str, float]:
        """Units each bucket could grant right now (negative: that much is booked ahead)."""
        return self._backend.available(self.limits)

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
        start = time.monotonic()
        costs = self._costs(requests, tokens, input_tokens, output_tokens)
        if isinstance(self._backend, _StorageBackend):
            grant = await asyncio.to_thread(self._backend.reserve, self.limits, costs, timeout)
        else:
            grant = self._backend.reserve(self.limits, costs, timeout)
        if not grant.granted:
            raise self._timeout_error(costs, timeout, grant.wait_s)
        if grant.wait_s <= 0:
            return time.monotonic() - start
        target = start + grant.wait_s
        shift = grant.shift
        try:
            while True:
                remaining = target - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                if isinstance(self._backend, _StorageBackend):
                    extra, shift = await asyncio.to_thread(self._extra_pause, shift)
                else:
                    extra, shift = self._extra_pause(shift)
                if extra <= 0:
                    break
                target += extra
                if timeout is not None and target - start > timeout:
                    raise self._timeout_error(costs, timeout, target - time.monotonic())
        except BaseException:
            self._refund(costs)
            raise
        return time.monotonic() - start


def _rebuild(name: str, limits: tuple[Limit, ...], url: str | None) -> RateLimiter:
    return RateLimiter(name, limits=limits, storage=url)


__all__ = ["Decision", "Limit", "RateLimiter"]
