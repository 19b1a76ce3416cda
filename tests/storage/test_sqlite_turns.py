"""SQLite write turns across processes: a lock file beside the database (storage/_sqlite.py)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest

from studyhall.storage import connect
from studyhall.storage._sqlite import WouldWait, turns, unless_waiting
from tests._util import python, wait_until

WRITER = """
import sys
from studyhall.storage import connect
st = connect(sys.argv[1])
print("ready", flush=True)
st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE IF NOT EXISTS marks (who TEXT)"))
print("wrote", flush=True)
"""

HOLDER = """
import sys
from studyhall.storage import connect
from studyhall.storage._sqlite import WouldWait, turns, unless_waiting
st = connect(sys.argv[1])
with turns.taken(st.engine):
    print("holding", flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def _line(proc: subprocess.Popen[str], within: float) -> str | None:
    """The next line ``proc`` prints, or None if none comes within ``within`` seconds."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], within)[0]:
        return None
    return proc.stdout.readline()


def test_a_writer_in_another_process_waits_for_the_turn_and_starts_when_it_is_freed(sqlite_url):
    st = connect(sqlite_url)
    with contextlib.ExitStack() as stack:
        with turns.taken(st.engine):
            assert Path(f"{st.engine.url.database}-turn").exists()  # beside the database, never the database itself
            writer = stack.enter_context(python(WRITER, sqlite_url, stdout=subprocess.PIPE, text=True))
            assert _line(writer, within=60) == "ready\n"
            # SQLite's own lock is free (this process holds only the turn): without the turn the write would go ahead.
            assert _line(writer, within=1.0) is None
        assert _line(writer, within=30) == "wrote\n"
    assert writer.returncode == 0


def test_a_process_that_dies_holding_the_turn_releases_it(sqlite_url):
    st = connect(sqlite_url)
    with python(HOLDER, sqlite_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert _line(holder, within=60) == "holding\n"
        done = threading.Event()
        writer = threading.Thread(
            target=lambda: (st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (a)")), done.set())
        )
        writer.start()
        assert not done.wait(0.5)  # waiting for the holder's turn
        holder.kill()
        assert done.wait(30)  # the kernel dropped the dead holder's lock
        writer.join()


def test_a_forked_child_does_not_share_its_parents_turn(sqlite_url):
    st = connect(sqlite_url)
    with turns.taken(st.engine):
        pid = os.fork()
        if pid == 0:  # the child: the same engine object, the parent's descriptor of the lock file inherited
            try:
                st.engine.dispose(close=False)  # SQLAlchemy's advice after fork: the parent's connections stay its own
                st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE forked (a)"))
            finally:
                os._exit(0)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the child must not get through while this process holds the turn
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the forked child wrote during its parent's turn"
            time.sleep(0.05)
    _, status = wait_until(lambda: (r := os.waitpid(pid, os.WNOHANG)) != (0, 0) and r, timeout=30, what="the child")
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_writer_that_waits_past_the_busy_timeout_goes_ahead(sqlite_url, monkeypatch):
    st = connect(sqlite_url)
    with python(HOLDER, sqlite_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert _line(holder, within=60) == "holding\n"
        monkeypatch.setattr(turns, "WAIT_S", 0.3)
        t0 = time.monotonic()
        st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (a)"))  # SQLite's own lock is free
        assert time.monotonic() - t0 >= 0.3
        holder.kill()


def _count(st, table: str) -> int:
    return st.transaction(lambda c: c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar())


def _marks(st):
    """A table of marks in ``st``, and a write that adds one."""
    st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE marks (who TEXT)"))
    return lambda c: c.exec_driver_sql("INSERT INTO marks VALUES ('x')")


def test_unless_waiting_refuses_a_busy_first_turn_and_writes_nothing(sqlite_url):
    st = connect(sqlite_url)
    mark = _marks(st)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with turns.taken(st.engine):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        t0 = time.monotonic()
        with pytest.raises(WouldWait), unless_waiting(0.05):
            st.transaction(mark)
        assert time.monotonic() - t0 < 5  # not SQLite's 30 s, not the holder's whole turn
    finally:
        release.set()
        holder.join()
    assert _count(st, "marks") == 0
    with unless_waiting(0.05):  # the turn is free now: the work goes ahead here
        st.transaction(mark)
    assert _count(st, "marks") == 1


def test_unless_waiting_refuses_when_another_process_holds_the_turn(sqlite_url):
    st = connect(sqlite_url)
    with python(HOLDER, sqlite_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert _line(holder, within=60) == "holding\n"
        with pytest.raises(WouldWait), unless_waiting(0.05):
            st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (a)"))
        holder.kill()
    st.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (a)"))  # it wrote nothing before


def test_after_its_first_turn_unless_waiting_waits_like_everyone(sqlite_url):
    # Work that already wrote must never be told to start again elsewhere.
    st = connect(sqlite_url)
    mark = _marks(st)
    started, release = threading.Event(), threading.Event()

    def hold_then_release() -> None:
        started.wait(30)
        with turns.taken(st.engine):
            release.set()
            time.sleep(0.2)  # a turn longer than the 0.05 s budget, not a synchronization

    other = threading.Thread(target=hold_then_release)
    other.start()
    with unless_waiting(0.05):
        st.transaction(mark)  # the first turn: free
        started.set()
        assert release.wait(30)
        st.transaction(mark)  # busy for 0.2 s: waited for, not refused
    other.join()
    assert _count(st, "marks") == 2


def test_reads_do_not_wait_for_a_writers_turn(sqlite_url):
    # Health checks and lookups must not queue behind another process's long write.
    st = connect(sqlite_url)
    sid = st.optuna.create_new_study([optuna.study.StudyDirection.MINIMIZE], "readable")
    with python(HOLDER, sqlite_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert _line(holder, within=60) == "holding\n"
        t0 = time.monotonic()
        st.now()
        assert st.study_id("readable") == sid
        assert st.optuna.get_study_id_from_name("readable") == sid
        assert st.optuna.get_study_directions(sid) == [optuna.study.StudyDirection.MINIMIZE]
        assert [s.study_name for s in st.optuna.get_all_studies()] == ["readable"]
        assert st.stale_trial_ids(sid) == []
        assert time.monotonic() - t0 < 5  # not a turn's wait (the holder never lets go)
        holder.kill()
