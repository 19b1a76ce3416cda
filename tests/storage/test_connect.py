from __future__ import annotations

import pickle

import pytest
import sqlalchemy as sa

from storage import InvalidRequest, StudyhallError, connect, tables
from storage._migrate import VERSION_TABLE, head


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
