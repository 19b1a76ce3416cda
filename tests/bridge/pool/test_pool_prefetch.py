"""WorkerPool(prefetch=N): a busy worker is sent its next tasks ahead, and nothing is lost or run twice."""

from __future__ import annotations

import os
import threading

import pool_helpers as h
import pytest

from studyhall.bridge import InvalidRequest, TaskTimeout, WorkerCrashed, WorkerPool


@pytest.mark.parametrize("prefetch", [1, 8])
def test_many_tasks_come_back_in_order_with_nothing_left_queued(prefetch: int) -> None:
    with WorkerPool(min_workers=2, max_workers=2, prefetch=prefetch) as pool:
        assert list(pool.map(h.double, range(2000))) == [2 * i for i in range(2000)]
        futures = [pool.submit(h.double, i) for i in range(500)]
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(500)]
        stats = pool.stats()
    assert stats["completed"] == 2500 and stats["failed"] == 0 and stats["queued"] == 0


def _sent_ahead(pool: WorkerPool, release: threading.Event, first_task: object, *args: object, **kw: object):
    """Submit a gated first task, then a second that the busy (only) worker is sent ahead."""
    first = pool.submit(first_task, *args, on_call=lambda p: release.wait(30), **kw)  # type: ignore[arg-type]
    h.wait_until(lambda: pool.stats()["busy"] == 1, what="the first task to start")
    second = pool.submit(h.pid)
    assert pool.stats()["queued"] == 1
    assert not second.cancel()  # it is on its way to the worker: it counts as running
    return first, second


def test_a_task_sent_ahead_to_a_worker_that_dies_runs_on_its_replacement() -> None:
    with WorkerPool(min_workers=1, max_workers=1, prefetch=1) as pool:
        release = threading.Event()
        first, second = _sent_ahead(pool, release, h.gate_then_exit, 3)
        release.set()
        with pytest.raises(WorkerCrashed) as crash:
            first.result(timeout=30)
        assert second.result(timeout=30) != crash.value.pid  # run once, by the replacement
        assert pool.stats()["completed"] == 1 and pool.stats()["crashes"] == 1


def test_every_task_sent_ahead_to_a_worker_that_dies_runs_once_in_order() -> None:
    with WorkerPool(min_workers=1, max_workers=1, prefetch=4) as pool:
        release = threading.Event()
        first = pool.submit(h.gate_then_exit, 3, on_call=lambda p: release.wait(30))
        h.wait_until(lambda: pool.stats()["busy"] == 1, what="the first task to start")
        order: list[int] = []
        rest = [pool.submit(h.chatter, 1, on_send=lambda _, i=i: order.append(i)) for i in range(6)]
        assert pool.stats()["queued"] == 6  # 4 sent ahead, 2 waiting in the pool
        release.set()
        with pytest.raises(WorkerCrashed):
            first.result(timeout=30)
        assert [f.result(timeout=30) for f in rest] == [1] * 6
    assert order == list(range(6))


def test_a_task_sent_ahead_gets_its_own_timeout_from_when_it_starts() -> None:
    with WorkerPool(min_workers=1, max_workers=1, prefetch=1) as pool:
        hung = pool.submit(h.sleep_forever, timeout=1.0)
        h.wait_until(lambda: pool.stats()["busy"] == 1, what="the hanging task to start")
        # waits ~1 s behind the hung task and a worker restart, then runs 0.2 s of its 0.8
        ahead = pool.submit(h.nap, 0.2, timeout=0.8)
        assert pool.stats()["queued"] == 1
        with pytest.raises(TaskTimeout):
            hung.result(timeout=30)
        assert ahead.result(timeout=30) != os.getpid()
        assert pool.stats()["timeouts"] == 1


def test_shutdown_runs_what_was_sent_ahead_and_cancels_the_rest() -> None:
    pool = WorkerPool(min_workers=1, max_workers=1, prefetch=1)
    pool.__enter__()
    release = threading.Event()
    first, second = _sent_ahead(pool, release, h.gate)
    third = pool.submit(h.pid)
    assert pool.stats()["queued"] == 2
    release.set()
    pool.shutdown(wait=True, cancel_pending=True)
    assert first.result(timeout=30) == second.result(timeout=30)  # the same worker ran both
    assert third.cancelled()


def test_recycling_counts_the_task_sent_ahead() -> None:
    with WorkerPool(min_workers=1, max_workers=1, prefetch=1, max_tasks_per_worker=3) as pool:
        pids = [f.result(timeout=60) for f in [pool.submit(h.pid) for _ in range(9)]]
    assert all(pids.count(p) <= 3 for p in pids) and len(set(pids)) >= 3


@pytest.mark.parametrize(
    "kwargs",
    [{"prefetch": -1}, {"prefetch": 65}, {"prefetch": 1.5}, {"prefetch": True}, {"prefetch": 1, "max_memory_mb": 512}],
)
def test_bad_prefetch_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest, match="prefetch"):
        WorkerPool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_shrinking_stops_a_worker_even_while_tasks_keep_coming() -> None:
    with WorkerPool(min_workers=2, max_workers=2, prefetch=8) as pool:
        futures = [pool.submit(h.nap, 0.002) for _ in range(1500)]
        h.wait_until(lambda: pool.stats()["completed"] >= 20, what="the backlog to start draining")
        pool.resize(min_workers=1, max_workers=1)
        h.wait_until(lambda: pool.stats()["workers"] == 1, what="one worker to be stopped")
        assert not all(f.done() for f in futures)  # it stopped before the backlog ran out
        assert len({f.result(timeout=60) for f in futures}) == 2
    assert pool.stats()["scale_downs"] == 1
