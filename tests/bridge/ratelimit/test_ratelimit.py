"""RateLimiter in one process: decisions, backpressure, FIFO, pause, adjust, timeouts."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from studyhall.bridge import Decision, InvalidRequest, Limit, RateLimiter, RateLimitTimeout, StudyhallError


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_limit_validation_names_the_problem():
    with pytest.raises(InvalidRequest, match="exactly one"):
        Limit(requests=1, tokens=2)
    with pytest.raises(InvalidRequest, match="exactly one"):
        Limit()
    with pytest.raises(InvalidRequest, match="positive"):
        Limit(tokens=-5)
    with pytest.raises(InvalidRequest, match="per="):
        Limit(requests=5, per=0)
    with pytest.raises(InvalidRequest, match="at least one limit"):
        RateLimiter(name())
    with pytest.raises(InvalidRequest, match="same bucket"):
        RateLimiter(name(), rpm=10, limits=[Limit(requests=20, per=60)])
    lim = Limit(output_tokens=1000, per=30, burst=900)
    assert (lim.kind, lim.amount, lim.capacity, lim.bucket) == ("output_tokens", 1000.0, 900.0, "output_tokens/30s")
    for bad in (-0.1, 30.0, "1s", True, float("nan")):
        with pytest.raises(InvalidRequest, match="headroom"):
            Limit(output_tokens=1000, per=30, headroom=bad)  # type: ignore[arg-type]
    # 10% of the window up to 1 s is held back by default; never the last unit
    assert Limit(requests=600, per=60).tolerance == pytest.approx(59.0)
    assert Limit(requests=100, per=2).tolerance == pytest.approx(1.8)
    assert Limit(requests=1, per=60).tolerance == pytest.approx(60.0)
    assert Limit(requests=600, per=60, headroom=0).tolerance == pytest.approx(60.0)


def test_try_acquire_decisions_and_retry_after():
    lim = RateLimiter(name(), limits=[Limit(requests=3, per=1.0, headroom=0)])
    assert [bool(lim.try_acquire()) for _ in range(3)] == [True, True, True]
    d = lim.try_acquire()
    assert isinstance(d, Decision) and not d.allowed
    # One request refills every 1/3 s; the bucket just emptied.
    assert 0.2 < d.retry_after_s <= 1 / 3 + 1e-6


def test_all_buckets_are_checked_and_consumed_together():
    lim = RateLimiter(
        name(), limits=[Limit(requests=10, per=3600, headroom=0), Limit(tokens=100, per=3600, headroom=0)]
    )
    assert lim.try_acquire(tokens=80)
    denied = lim.try_acquire(tokens=30)
    assert not denied and denied.retry_after_s > 60
    avail = lim.available()
    # The denied request took nothing from the requests bucket either.
    assert avail["requests/3600s"] == pytest.approx(9, abs=0.01)
    assert avail["tokens/3600s"] == pytest.approx(20, abs=0.1)


def test_rpm_and_tpm_shorthands_make_minute_buckets():
    lim = RateLimiter(name(), rpm=500, tpm=200_000)
    assert [lim_.bucket for lim_ in lim.limits] == ["requests/60s", "tokens/60s"]
    assert lim.acquire(tokens=1200, timeout=1.0) < 0.1
    # 1 s of refill is held back by default (Limit.headroom)
    assert lim.available()["tokens/60s"] == pytest.approx(200_000 - 1200 - 200_000 / 60, abs=10)


def test_oversize_request_is_rejected_at_once():
    lim = RateLimiter(name(), limits=[Limit(tokens=100, per=60.0)])
    start = time.monotonic()
    with pytest.raises(InvalidRequest, match="can never fit"):
        lim.acquire(tokens=101)  # no timeout: it must not block forever
    with pytest.raises(InvalidRequest):
        lim.try_acquire(tokens=1000)
    assert time.monotonic() - start < 1.0
    assert lim.available()["tokens/60s"] == pytest.approx(100 - 100 / 60, abs=0.01)  # untouched, less the headroom
    with pytest.raises(InvalidRequest, match="non-negative"):
        lim.acquire(tokens=-1)


def test_acquire_blocks_until_the_slot_then_returns_the_wait():
    lim = RateLimiter(name(), limits=[Limit(requests=5, per=1.0, headroom=0)])
    for _ in range(5):
        assert lim.acquire() < 0.05
    waited = lim.acquire(timeout=5.0)
    assert waited >= 0.19  # one request refills every 0.2 s: never earlier
    assert waited < 2.0


def test_timeout_raises_without_consuming_capacity():
    lim = RateLimiter(name(), limits=[Limit(tokens=100, per=10.0)])
    lim.acquire(tokens=100)
    before = lim.available()["tokens/10s"]
    start = time.monotonic()
    with pytest.raises(RateLimitTimeout, match="within 0.1s") as info:
        lim.acquire(tokens=50, timeout=0.1)  # 50 tokens need 5 s of refill
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, StudyhallError)
    assert time.monotonic() - start < 0.5  # decided at once, not after sleeping
    assert lim.available()["tokens/10s"] == pytest.approx(before, abs=1.0)


def test_adjust_reconciles_estimates_both_ways():
    lim = RateLimiter(name(), limits=[Limit(tokens=1000, per=3600)])
    lim.acquire(tokens=800)
    assert not lim.try_acquire(tokens=300)
    lim.adjust(tokens=-400)  # the call used 400 tokens fewer than estimated
    assert lim.try_acquire(tokens=300)
    lim.adjust(tokens=+250)  # ...and this one 250 more
    assert lim.available()["tokens/3600s"] == pytest.approx(1000 - 800 + 400 - 300 - 250, abs=2)
    lim.adjust(tokens=-10_000)  # a refund never overfills the bucket
    assert lim.available()["tokens/3600s"] == pytest.approx(1000, abs=2)


def test_big_request_is_served_before_later_small_ones():
    lim = RateLimiter(name(), limits=[Limit(tokens=100, per=1.0)])
    lim.acquire(tokens=100)
    granted: list[tuple[str, float]] = []
    lock = threading.Lock()

    def take(label: str, tokens: int) -> None:
        lim.acquire(tokens=tokens, timeout=10)
        with lock:
            granted.append((label, time.monotonic()))

    big = threading.Thread(target=take, args=("big", 90))
    big.start()
    # The big request has booked its slot once 90 tokens are owed beyond an empty bucket.
    wait_until(lambda: lim.available()["tokens/1s"] < -80, what="the big request to book its slot")
    smalls = [threading.Thread(target=take, args=(f"small{i}", 10)) for i in range(5)]
    for t in smalls:
        t.start()
    for t in [big, *smalls]:
        t.join(timeout=10)
    # Without FIFO the small ones (one every 0.1 s) would keep the big one waiting.
    assert granted[0][0] == "big", granted
    assert len(granted) == 6


def test_pause_holds_everyone_and_shifts_booked_slots():
    lim = RateLimiter(name(), limits=[Limit(requests=2, per=1.0)])
    other = RateLimiter(lim.name, limits=lim.limits)  # same name, same process: one limit
    lim.acquire()
    lim.acquire()
    got: list[float] = []
    sleeper = threading.Thread(target=lambda: got.append(other.acquire(timeout=10)))
    sleeper.start()
    wait_until(lambda: lim.available()["requests/1s"] < -0.5, what="the sleeper to book")
    paused_at = time.monotonic()
    lim.pause(0.6)
    assert 0.5 < other.paused_for() <= 0.6
    sleeper.join(timeout=10)
    # Its slot was ~0.5 s away; the pause moved it by 0.6 s.
    assert time.monotonic() - paused_at >= 0.6
    waited = lim.acquire(timeout=10)
    assert waited > 0.3  # and the schedule behind it moved too
    with pytest.raises(InvalidRequest):
        lim.pause(-1)


def test_pause_beyond_timeout_times_out_and_gives_the_slot_back():
    lim = RateLimiter(name(), limits=[Limit(requests=10, per=1.0)])
    lim.pause(5.0)
    with pytest.raises(RateLimitTimeout):
        lim.acquire(timeout=0.2)
    assert lim.try_acquire().retry_after_s > 4


def test_in_process_limiter_pickles_by_name_and_limits():
    lim = RateLimiter(name(), limits=[Limit(requests=4, per=3600), Limit(tokens=50, per=3600)])
    lim.acquire(tokens=20)
    copy = pickle.loads(pickle.dumps(lim))
    assert copy.limits == lim.limits and copy.name == lim.name and copy.storage is None
    # In the same process the copy is the same limit.
    assert copy.available()["tokens/3600s"] == pytest.approx(30, abs=0.1)
    assert "this process" in repr(copy)


def test_acquire_async_waits_and_cancellation_refunds():
    lim = RateLimiter(name(), limits=[Limit(requests=5, per=1.0)])

    async def main() -> tuple[float, float, float]:
        first = time.monotonic()
        for _ in range(5):
            await lim.acquire_async(timeout=1)
        await lim.acquire_async(timeout=5)
        # the sixth of 5 per second: not before 0.2 s after the first (however long the five took)
        waited = time.monotonic() - first
        before = lim.available()["requests/1s"]
        task = asyncio.create_task(lim.acquire_async(timeout=5))
        await asyncio.sleep(0.05)
        booked = lim.available()["requests/1s"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waited, before - booked, lim.available()["requests/1s"] - booked

    waited, took, gave_back = asyncio.run(main())
    assert waited >= 0.19
    assert took == pytest.approx(1, abs=0.35)
    assert gave_back == pytest.approx(1, abs=0.35)
