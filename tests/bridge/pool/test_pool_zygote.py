"""Workers forked from the pool's zygote (Linux): as if started fresh, and booted instead when it fails."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pool_helpers as h
import psutil
import pytest

from studyhall.bridge import InvalidRequest, RestartStorm, WorkerPool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote forks workers on Linux only")


def zygote_of(pool: WorkerPool) -> psutil.Process:
    """The one child of this process that is no worker of ``pool``: its zygote (the workers are its children)."""
    workers = {w.pid for w in pool._workers}
    parents = {psutil.Process(p).ppid() for p in workers}
    assert len(parents) == 1 and os.getpid() not in parents, "workers should be forked by one zygote"
    return psutil.Process(parents.pop())


def test_preloaded_modules_are_loaded_before_any_task_imports_them() -> None:
    # colorsys: a standard module that nothing in a worker imports by itself.
    with WorkerPool(min_workers=2, max_workers=2, preload=["colorsys"]) as pool:
        assert pool.submit(h.loaded_of, "colorsys", "wave").result(timeout=30) == ["colorsys"]
        assert zygote_of(pool).ppid() == os.getpid()


def test_a_worker_forked_later_has_the_pools_environment_cwd_and_stdout_of_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with WorkerPool(min_workers=1, max_workers=1, max_tasks_per_worker=1) as pool:
        assert pool.submit(h.environment, "STUDYHALL_ZYGOTE_TEST").result(timeout=30) == (None, os.getcwd())
        # The zygote started with the first worker; the next one is forked after these changes.
        monkeypatch.setenv("STUDYHALL_ZYGOTE_TEST", "later")
        monkeypatch.chdir(tmp_path)
        assert pool.submit(h.environment, "STUDYHALL_ZYGOTE_TEST").result(timeout=30) == ("later", str(tmp_path))
        pool.submit(h.say, "from a forked worker\n").result(timeout=30)
    assert "from a forked worker" in capfd.readouterr().out


def test_a_killed_zygote_takes_its_workers_and_the_pool_replaces_all() -> None:
    with WorkerPool(min_workers=2, max_workers=2) as pool:
        before = {pool.submit(h.pid).result(timeout=30) for _ in range(4)}
        zygote = zygote_of(pool)
        zygote.send_signal(signal.SIGKILL)
        h.wait_until(lambda: pool.stats()["restarts"] >= 2 and pool.stats()["idle"] == 2, what="both replaced")
        after = {pool.submit(h.pid).result(timeout=30) for _ in range(4)}
        assert after and not after & before
        assert zygote_of(pool).pid != zygote.pid


def test_a_zygote_that_dies_before_forking_gives_way_to_booted_workers(caplog: pytest.LogCaptureFixture) -> None:
    with WorkerPool(min_workers=1, max_workers=2, preload=["pool_crash_on_import"]) as pool:
        assert [f.result(timeout=30) for f in [pool.submit(h.double, i) for i in range(4)]] == [0, 2, 4, 6]
        workers = [w.pid for w in pool._workers]
        assert all(psutil.Process(p).ppid() == os.getpid() for p in workers)
    assert "exited with code 7" in caplog.text and "every later one boots as a fresh interpreter" in caplog.text


def test_a_python_that_cannot_start_ends_in_a_restart_storm_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        future = pool.submit(h.double, 1)
        with pytest.raises(RestartStorm, match="FileNotFoundError"):
            future.result(timeout=60)


@pytest.mark.parametrize("preload", ["numpy", [1], ["not a module"], ["a..b"], [""], ["x\x00y"]])
def test_preload_takes_module_names_only(preload: object) -> None:
    with pytest.raises(InvalidRequest, match="preload must be a sequence of module names"):
        WorkerPool(preload=preload)  # type: ignore[arg-type]
