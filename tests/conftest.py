"""Shared fixtures: a storage parametrised over SQLite, PostgreSQL and MariaDB.

Each test session gets its own PostgreSQL schema and its own MariaDB database
(dropped at the end), and each test its own study names, so runs never see each
other's rows. Under CI=true a missing server fails the run; elsewhere the cases
that need it skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from studyhall import storage
from studyhall.storage import Storage, connect

PG_ADMIN = os.environ.get("STUDYHALL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN = os.environ.get("STUDYHALL_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgresql", "mysql"]
SESSION_TAG = uuid.uuid4().hex[:10]


_SERVERS = {"postgresql", "mysql"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what ``make test-fast`` leaves out: tests/integration, and the cases on a database server."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        spec = getattr(item, "callspec", None)
        values = spec.params.values() if spec is not None else ()
        fixtures = set(getattr(item, "fixturenames", ()))
        if any(isinstance(v, str) and v in _SERVERS for v in values) or {f"{s}_url" for s in _SERVERS} & fixtures:
            item.add_marker(pytest.mark.server)


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    if IN_CI:
        pytest.fail(f"{msg}; CI=true requires it", pytrace=False)
    pytest.skip(f"{msg}; start it to run these cases")


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema of this test session's own."""
    schema = f"sh_{SESSION_TAG}"
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    _close_all()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A MariaDB URL on a database of this test session's own."""
    db = f"sh_{SESSION_TAG}"
    try:
        admin = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {db}")
    except Exception as exc:  # noqa: BLE001
        _unavailable("MariaDB at 127.0.0.1:3306", exc)
    yield MYSQL_ADMIN.rsplit("/", 1)[0] + f"/{db}"
    _close_all()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {db}")
    admin.dispose()


def _close_all() -> None:
    for st in list(storage._storage._cache.values()):
        st.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'studyhall.db'}"


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite database at the newest schema, made once: creating the schema costs about a second."""
    path = tmp_path_factory.mktemp("template") / "studyhall.db"
    st = connect(f"sqlite:///{path}")
    st.close()
    with sqlite3.connect(path) as con:  # everything into the file itself, so a copy is whole
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def sqlite_db_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A SQLite database of this test's own, already at the newest schema (a copy of the template)."""
    path = tmp_path / "studyhall.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest) -> str:
    """The URL of an isolated database, once per backend (SQLite: a fresh copy of an empty database)."""
    name = "sqlite_db_url" if request.param == "sqlite" else f"{request.param}_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(storage_url: str) -> Storage:
    """A connected Storage, once per backend."""
    return connect(storage_url)


@pytest.fixture
def study_name(request: pytest.FixtureRequest) -> str:
    """A study name no other test (or test run) uses."""
    return f"{request.node.name[:60]}-{uuid.uuid4().hex[:8]}"


_UPSTREAM_TEST = "test_optuna_upstream.py::test_optunas_own_tests_pass_on_studyhalls_storage"


def _start_upstream(config: pytest.Config, ids: Iterable[str]) -> None:
    """Start Optuna's own suite now, beside the rest, when its test is selected (minutes of subprocesses)."""
    from tests.storage._upstream import RUN_KEY, UpstreamRun, folder_of

    if RUN_KEY in config.stash or config.option.collectonly or not any(i.endswith(_UPSTREAM_TEST) for i in ids):
        return
    run = config.stash[RUN_KEY] = UpstreamRun(folder_of(config))
    run.start()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without pytest-xdist: start Optuna's suite once collection is done (on a worker the controller does)."""
    if not hasattr(session.config, "workerinput"):
        _start_upstream(session.config, (item.nodeid for item in session.items))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist controller: tell each worker where the files of Optuna's suite will be."""
    from tests.storage._upstream import DIR_KEY, folder_of

    node.workerinput[DIR_KEY] = str(folder_of(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist controller: start Optuna's suite once, when a worker has collected its test."""
    _start_upstream(node.config, ids)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop Optuna's suite if it still runs, drop its scratch databases and remove its files."""
    from tests.storage._upstream import DIR_STASH, RUN_KEY

    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.close()
    folder = session.config.stash.get(DIR_STASH, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
