"""WorkerPool under failure: crashes, timeouts, health, elasticity, restart storms, orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pool_helpers as h
import psutil
import pytest

from studyhall.bridge import (
    InvalidRequest,
    PoolClosed,
    PoolTimeouts,
    RestartStorm,
    TaskTimeout,
    WorkerCrashed,
    WorkerPool,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("task", "exitcode", "sig"),
    [
        (lambda: h.exit_now(7), 7, None),
        (h.kill_self, None, signal.SIGKILL),
        (h.segfault, None, signal.SIGSEGV),
    ],
    ids=["os._exit", "sigkill", "segfault"],
)
def test_a_crash_fails_only_its_task_and_the_worker_is_replaced(task, exitcode, sig) -> None:  # type: ignore[no-untyped-def]
    with WorkerPool(min_workers=2, max_workers=2) as pool:
        release = threading.Event()
        bystander = pool.submit(h.gate, on_call=lambda p: release.wait(30))
        h.wait_until(lambda: pool.stats()["busy"] == 1, what="the bystander to start")
        crashed = pool.submit(task)
        with pytest.raises(WorkerCrashed) as info:
            crashed.result(timeout=30)
        err = info.value
        assert err.exitcode == exitcode and err.signal == sig and err.pid > 0
        assert str(err.pid) in str(err)
        assert gone(err.pid)
        assert not bystander.done()  # the other worker's task is undisturbed
        release.set()
        assert bystander.result(timeout=30) != err.pid
        assert pool.submit(h.double, 5).result(timeout=30) == 10
        h.wait_until(lambda: pool.stats()["workers"] == 2 and pool.stats()["idle"] == 2, what="the replacement")
        stats = pool.stats()
        assert stats["crashes"] == 1 and stats["restarts"] == 1 and stats["failed"] == 1


def test_messages_sent_before_a_sigkill_reach_on_send_before_the_future_fails() -> None:
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        got: list[int] = []
        seen_when_failed: list[int] = []
        future = pool.submit(h.chatter_then_die, 500, on_send=got.append)
        future.add_done_callback(lambda f: seen_when_failed.append(len(got)))
        with pytest.raises(WorkerCrashed) as info:
            future.result(timeout=30)
        assert info.value.signal == signal.SIGKILL
        assert seen_when_failed == [500]
        assert got == list(range(500))


def test_a_task_past_its_timeout_is_killed_and_others_are_undisturbed() -> None:
    with WorkerPool(min_workers=2, max_workers=2, task_timeout=0.5) as pool:
        release = threading.Event()
        # A per-submit timeout overrides the pool's: this one may outlive the hang.
        bystander = pool.submit(h.gate, timeout=60, on_call=lambda p: release.wait(30))
        h.wait_until(lambda: pool.stats()["busy"] == 1, what="the bystander to start")
        with pytest.raises(TaskTimeout, match="timeout of 0.5s") as info:
            pool.submit(h.sleep_forever).result(timeout=30)
        assert isinstance(info.value, TimeoutError)
        assert not bystander.done()
        release.set()
        assert bystander.result(timeout=30) > 0
        with pytest.raises(TaskTimeout, match="timeout of 0.2s"):
            pool.submit(h.sleep_forever, timeout=0.2).result(timeout=30)
        assert pool.submit(h.nap, 0.01).result(timeout=30) > 0
        stats = pool.stats()
        assert stats["timeouts"] == 2 and stats["failed"] == 2 and stats["crashes"] == 0
        h.wait_until(lambda: pool.stats()["restarts"] == 2, what="two replacements")


def test_a_timeout_kills_what_the_task_started() -> None:
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        sleepers: list[int] = []
        with pytest.raises(TaskTimeout):
            pool.submit(h.start_sleeper_then_hang, timeout=1.0, on_send=sleepers.append).result(timeout=30)
        assert len(sleepers) == 1
        h.wait_until(lambda: gone(sleepers[0]), timeout=10, what="the grandchild `sleep 1000` to die")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["timeout", "timeout-sigterm-ignored", "crash"])
def test_grandchildren_that_left_the_process_group_die_with_the_task(how: str) -> None:
    # issue 13 item 13: a new session (start_new_session=True) or a daemon whose parent
    # exited is out of reach of the group kill; the worker's subreaper keeps them reachable.
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        escaped: list[list[int]] = []
        if how.startswith("timeout"):
            task = h.start_escapees_then_hang if how == "timeout" else h.start_escapees_deaf_to_sigterm
            with pytest.raises(TaskTimeout):
                pool.submit(task, timeout=2.0, on_send=escaped.append).result(timeout=30)
        else:
            with pytest.raises(WorkerCrashed):
                pool.submit(h.start_escapees_then_exit, on_send=escaped.append).result(timeout=30)
        pids = escaped[0]
        try:
            h.wait_until(
                lambda: all(gone(p) for p in pids), timeout=10, what=f"the escaped grandchildren {pids} to die"
            )
        finally:
            for p in pids:  # never leave them behind, whatever the outcome
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        assert pool.submit(h.double, 2).result(timeout=30) == 4  # and the pool goes on


def test_a_worker_over_max_memory_is_replaced_before_it_gets_work() -> None:
    with WorkerPool(min_workers=1, max_workers=1, max_memory_mb=150, health_check_interval=None) as pool:
        # Queued right behind the hog: it must not run on the bloated worker.
        hog, after = pool.submit(h.hog, 300), pool.submit(h.pid)
        hog_pid = hog.result(timeout=30)
        assert after.result(timeout=30) != hog_pid
        h.wait_until(lambda: gone(hog_pid), what="the memory hog to be stopped")
        stats = pool.stats()
        assert stats["restarts"] == 1 and stats["crashes"] == 0


def test_an_idle_worker_whose_children_use_too_much_memory_is_replaced() -> None:
    with WorkerPool(min_workers=1, max_workers=1, max_memory_mb=150, health_check_interval=0.1) as pool:
        holder = pool.submit(h.start_memory_hog_child, 300).result(timeout=30)
        worker_pid, child_pid = holder
        h.wait_until(lambda: gone(worker_pid) and gone(child_pid), what="the worker and its hungry child to stop")
        assert pool.submit(h.pid).result(timeout=30) != worker_pid
        assert pool.stats()["restarts"] == 1


@pytest.mark.parametrize("check", ["pool_helpers:health", h.health_or_raise], ids=["returns-false", "raises"])
def test_a_worker_failing_its_health_check_is_replaced(check) -> None:  # type: ignore[no-untyped-def]
    with WorkerPool(min_workers=1, max_workers=1, health_check=check, health_check_interval=0.1) as pool:
        sick = pool.submit(h.make_sick).result(timeout=30)
        h.wait_until(lambda: gone(sick), what="the sick worker to be stopped")
        assert pool.submit(h.pid).result(timeout=30) != sick
        assert pool.stats()["restarts"] == 1


def test_an_unresponsive_idle_worker_is_killed_and_replaced() -> None:
    with WorkerPool(
        min_workers=1,
        max_workers=1,
        health_check=lambda: h.nap(60),
        health_check_interval=0.1,
        timeouts=PoolTimeouts(health_check=0.3),
    ) as pool:
        first = pool.submit(h.pid).result(timeout=30)
        h.wait_until(lambda: gone(first), what="the unresponsive worker to be killed")
        h.wait_until(lambda: pool.stats()["restarts"] >= 1, what="a replacement")


def test_max_tasks_per_worker_recycles_workers() -> None:
    with WorkerPool(min_workers=1, max_workers=1, max_tasks_per_worker=2) as pool:
        pids = [pool.submit(h.pid).result(timeout=30) for _ in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert len(set(pids)) == 3


def test_grows_while_tasks_wait_and_shrinks_when_idle() -> None:
    with WorkerPool(min_workers=1, max_workers=3, idle_shrink_after=0.3) as pool:
        release = threading.Event()
        futures = [pool.submit(h.gate, on_call=lambda p: release.wait(30)) for _ in range(4)]
        h.wait_until(lambda: pool.stats()["busy"] == 3, what="three busy workers")
        stats = pool.stats()
        assert stats["workers"] == 3 and stats["queued"] == 1 and stats["scale_ups"] == 2
        release.set()
        assert len({f.result(timeout=30) for f in futures}) == 3
        h.wait_until(lambda: pool.stats()["workers"] == 1, what="the idle extra workers to exit")
        assert pool.stats()["scale_downs"] == 2
        assert pool.stats()["crashes"] == 0


def test_resize_changes_bounds_at_run_time() -> None:
    with WorkerPool(min_workers=1, max_workers=1, idle_shrink_after=60) as pool:
        pool.submit(h.double, 1).result(timeout=30)
        pool.resize(min_workers=3, max_workers=3)
        h.wait_until(lambda: pool.stats()["idle"] == 3, what="three idle workers")
        pool.resize(min_workers=1, max_workers=1)
        h.wait_until(lambda: pool.stats()["workers"] == 1, what="back to one worker")
        assert pool.submit(h.double, 2).result(timeout=30) == 4
        stats = pool.stats()
        assert stats["scale_ups"] == 2 and stats["scale_downs"] == 2


def test_restart_storm_stops_respawning_and_fails_pending_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken environment, as after a bad PYTHONHOME: every worker interpreter dies at start-up.
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    with WorkerPool(min_workers=1, max_workers=2) as pool:
        future = pool.submit(h.double, 1)
        with pytest.raises(RestartStorm, match="died before they could take a task") as info:
            future.result(timeout=60)
        assert isinstance(info.value, PoolClosed)
        assert "exited with code 1" in str(info.value) and "PYTHONHOME" in str(info.value)
        with pytest.raises(RestartStorm):
            pool.submit(h.double, 2)
        assert pool.stats()["restarts"] >= WorkerPool.storm_limit - 1


ORPHAN_PARENT = """
import json, sys, threading
sys.path.insert(0, sys.argv[1])
from studyhall.bridge import WorkerPool
import pool_helpers as h
pool = WorkerPool(min_workers=2, max_workers=2)
sleepers = []
hung = pool.submit(h.start_sleeper_then_hang, on_send=sleepers.append)
h.wait_until(lambda: sleepers and pool.stats()["workers"] == 2 and pool.stats()["idle"] == 1)
print(json.dumps({"workers": [w.pid for w in pool._workers], "sleeper": sleepers[0]}), flush=True)
threading.Event().wait()
"""


def test_no_orphans_after_the_parent_is_sigkilled() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT, str(HERE)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, "the parent process did not report its workers"
        pids = json.loads(line)
        everything = [*pids["workers"], pids["sleeper"]]
        assert not any(gone(p) for p in everything)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        h.wait_until(lambda: all(gone(p) for p in everything), timeout=10, what="workers and grandchild to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_timed_out_task_fails_only_after_its_in_flight_on_call_returns() -> None:
    timeouts = PoolTimeouts(drain=0.1, kill_grace=0.1)
    with WorkerPool(min_workers=1, max_workers=1, timeouts=timeouts) as pool:
        killed = threading.Event()
        states: list[bool] = []
        holder: list[object] = []

        def slow_on_call(payload: object) -> None:
            # Hold the reply until the pool has killed the worker (past drain and grace).
            h.wait_until(lambda: pool.stats()["restarts"] == 1, what="the replacement")
            killed.set()
            states.append(holder[0].done())  # type: ignore[attr-defined]

        future = pool.submit(h.gate, timeout=0.3, on_call=slow_on_call)
        holder.append(future)
        with pytest.raises(TaskTimeout):
            future.result(timeout=30)
        assert killed.is_set() and states == [False]


def test_bad_timeouts_and_health_checks_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="kill_grace"):
        PoolTimeouts(kill_grace=0)
    lock = threading.Lock()
    with pytest.raises(InvalidRequest, match="cannot be pickled"):
        WorkerPool(health_check=lambda: lock.locked())


def test_a_pool_may_start_from_zero_workers_and_return_to_zero() -> None:
    with WorkerPool(min_workers=0, max_workers=2, idle_shrink_after=0.2, task_timeout=0.2) as pool:
        assert pool.stats()["workers"] == 0
        # math.inf lifts the pool's task_timeout for one task.
        assert pool.submit(h.nap, 0.5, timeout=float("inf")).result(timeout=30) > 0
        assert pool.stats()["scale_ups"] == 1
        h.wait_until(lambda: pool.stats()["workers"] == 0, what="the idle worker to exit")
        assert pool.stats()["scale_downs"] == 1


def test_a_module_in_the_working_directory_does_not_shadow_the_workers_stdlib(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A project with its own queue.py or socket.py, run from its root: workers must still start.
    for name in ("queue", "socket", "struct", "signal"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('a stdlib module was shadowed')\n")
    monkeypatch.chdir(tmp_path)
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        assert pool.submit(h.where).result(timeout=30)[0] == str(tmp_path)


def test_initializer_runs_once_in_every_worker_before_its_tasks_and_outside_their_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STUDYHALL_TEST_INIT_S", "0.6")  # longer than the tasks' timeout
    with WorkerPool(min_workers=1, max_workers=1, max_tasks_per_worker=2, initializer=h.initialize) as pool:
        marks = [pool.submit(h.initialized, timeout=0.5).result(timeout=60) for _ in range(4)]
    # each of the two workers (recycled after 2 tasks) ran it once, in itself, before any task
    assert marks[0] == marks[1] and marks[2] == marks[3] and marks[0] != marks[2]
    assert all(len(m) == 1 for m in marks)
    assert pool.stats()["timeouts"] == 0


def test_a_failing_initializer_is_a_restart_storm_that_names_its_error() -> None:
    with WorkerPool(min_workers=1, max_workers=1, initializer="pool_helpers:broken_initializer") as pool:
        future = pool.submit(h.double, 1)
        with pytest.raises(RestartStorm, match="initializer raise ValueError: OPENAI_API_KEY is not set"):
            future.result(timeout=60)
    with pytest.raises(InvalidRequest, match="initializer"):
        WorkerPool(initializer="not a target")
