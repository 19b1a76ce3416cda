from __future__ import annotations

import pickle

import pytest
import sqlalchemy as sa

from studyhall.storage import InvalidRequest, StudyhallError, connect, tables
from studyhall.storage._migrate import VERSION_TABLE, head
from tests._util import wait_until


def test_connect_creates_studyhall_tables_beside_optunas(store):
    names = sa.inspect(store.engine).get_table_names()
    for t in tables.metadata.tables:
        assert t in names
    assert "trials" in names and "studies" in names  # Optuna's own, untouched
    with store.engine.connect() as c:
        assert c.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == head()


def test_connect_reuses_and_pickles(store):
    assert connect(store.url) is store
    assert pickle.loads(pickle.dumps(store)) is store


def test_database_clock_is_epoch_seconds(store):
    import time

    assert abs(store.now() - time.time()) < 5


def test_sqlite_is_in_wal_mode(sqlite_url):
    st = connect(sqlite_url)
    with st.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one().lower() == "wal"


def test_sqlite_log_is_copied_back_in_the_background_not_by_a_write(tmp_path):
    # Nothing reaches the database file but through a checkpoint; no write here makes
    # SQLite's own (10,000 pages) happen, so a bigger file means the background one ran.
    path = tmp_path / "wal.db"
    st = connect(f"sqlite:///{path}")
    try:
        with st.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 10_000
        before = path.stat().st_size
        for i in range(50):
            st.transaction(
                lambda conn, i=i: conn.execute(
                    sa.insert(tables.llm_cache).values(
                        key=f"k{i}", model="m", response={"text": "x" * 4000}, created_at=0.0
                    )
                )
            )
        wait_until(lambda: path.stat().st_size > before + 50 * 4000, timeout=20, what="a background checkpoint")
    finally:
        st.close()


def test_sqlite_transactions_of_one_process_wait_their_turn_in_python_not_in_sqlites_sleeps(sqlite_url):
    # issue 12: SQLite makes a blocked IMMEDIATE transaction nap and poll (up to 100 ms a
    # nap), which gave the HTTP service's ask a p99 of over half a second at 8 clients.
    # Threads of one process queue on the engine's lock instead, starting when it is freed.
    import threading

    from studyhall.storage._sqlite import turns

    st = connect(sqlite_url)
    done = threading.Event()
    other = threading.Thread(target=lambda: (st.transaction(lambda c: c.exec_driver_sql("SELECT 1")), done.set()))
    with turns.taken(st.engine):
        with turns.taken(st.engine):  # reentrant within a thread
            other.start()
            other.join(timeout=0.5)
            assert not done.is_set()  # waiting for this thread's turn, not inside SQLite
    other.join(timeout=30)
    assert done.is_set()


def test_default_url_comes_from_environment(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("STUDYHALL_STORAGE", url)
    assert connect().url == url


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379", "sqlite://", "sqlite:///:memory:", "not a url", "oracle://x@y/z"],
)
def test_unsupported_urls_name_the_supported_schemes(url):
    with pytest.raises(InvalidRequest) as err:
        connect(url)
    assert isinstance(err.value, StudyhallError)
    assert "sqlite" in str(err.value)


def test_a_current_database_opens_without_alembic_or_optunas_orm(store):
    # A cold process opening an existing database reads both schema versions in one
    # statement; the migration machinery (about 100 ms of imports) is for the rest.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from studyhall.storage import connect\n"
        f"st = connect({store.url!r})\n"
        "st.optuna.get_all_studies()\n"
        "print(sorted(m for m in ('alembic', 'sqlalchemy.orm', 'optuna.storages._rdb.models') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_database_at_another_revision_takes_the_checking_path(sqlite_url):
    st = connect(sqlite_url)
    with st.engine.begin() as c:
        c.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'not-a-revision'"))
    from studyhall.storage._versions import schema_is_current

    assert not schema_is_current(st.engine)
