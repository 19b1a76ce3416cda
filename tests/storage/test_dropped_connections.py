"""Dropped connections cost nothing: no error reaches the caller, no trial twice, no traceback on stderr."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from studyhall import Float, Orchestrator
from studyhall.storage import connect
from tests.conftest import MYSQL_ADMIN, PG_ADMIN


class _Commits:
    """The first transaction of a tell commits, then its connection 'drops' before the answer."""

    def __init__(self, real: object) -> None:
        self.real, self.dropped = real, False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[sa.Connection]:
        with self.real() as conn:  # type: ignore[operator]
            yield conn
        if not self.dropped:
            self.dropped = True
            raise sa.exc.OperationalError("COMMIT", {}, Exception(2013, "Lost connection to MySQL server during query"))


def test_a_tell_that_committed_unseen_reports_success(storage_url, study_name, monkeypatch):
    # Seen on MariaDB: the retry found its own write and said "finished meanwhile".
    study = Orchestrator(storage_url).create_study(study_name)
    t = study.ask({"x": Float(0, 1)})
    commits = _Commits(study.storage.optuna._begin)
    monkeypatch.setattr(study.storage.optuna, "_begin", commits)
    told = study.tell(t, 0.5, user_attrs={"k": 1})
    monkeypatch.undo()
    assert commits.dropped  # committed, "dropped", then the retry saw our own write
    assert told.state.name == "COMPLETE"
    assert study.trial(0).value == 0.5 and study.trial(0).user_attrs["k"] == 1


def test_an_ask_that_committed_unseen_is_not_repeated(storage_url, study_name, monkeypatch):
    study = Orchestrator(storage_url).create_study(study_name)
    commits = _Commits(study.storage.optuna._begin)
    monkeypatch.setattr(study.storage.optuna, "_begin", commits)
    h = study.ask({"x": Float(0, 1)})
    monkeypatch.undo()
    assert [(t.number, t.params) for t in study.trials()] == [(h.number, h.params)]  # one trial, not two


@contextlib.contextmanager
def killed_connections(backend: str) -> Iterator[str]:
    """A fresh database whose connections a thread kills every 0.3 s; yields its URL."""
    name = f"kill_{uuid.uuid4().hex[:8]}"
    admin_url = PG_ADMIN if backend == "postgresql" else MYSQL_ADMIN
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    if backend == "postgresql":
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {name}")
        url = f"{PG_ADMIN}?options=-csearch_path%3D{name}&application_name={name}"
        victims = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'"
        kill = "SELECT pg_terminate_backend({})"
    else:
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
        url = MYSQL_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        victims = f"SELECT id FROM information_schema.processlist WHERE db = '{name}' AND id <> CONNECTION_ID()"
        kill = "KILL {}"
    connect(url)  # the schema first, untroubled
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(0.3):
            with admin.connect() as c:
                for (victim,) in c.exec_driver_sql(victims).all():
                    with contextlib.suppress(sa.exc.DBAPIError):
                        c.exec_driver_sql(kill.format(victim))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        stop.set()
        thread.join()
        connect(url).close()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE" if backend == "postgresql" else f"DROP DATABASE {name}")
        admin.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_killed_connections_lose_nothing_and_print_nothing(backend, request, caplog):
    request.getfixturevalue(f"{backend}_url")  # the server is up (or the case skips/fails as configured)
    with caplog.at_level(logging.WARNING), killed_connections(backend) as url:
        study = Orchestrator(url).create_study("killed")
        for _ in range(60):
            study.tell(study.ask({"x": Float(0, 1)}), 1.0)
        trials = study.trials()
    assert len(trials) == 60 and {t.state.name for t in trials} == {"COMPLETE"}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []


def test_a_connection_left_in_the_middle_of_a_command_is_replaced_not_reported(postgresql_url):
    # Seen once with connections killed every 0.7 s: psycopg answered "another command is
    # already in progress" and the write failed as a StorageError instead of being retried.
    st = connect(postgresql_url)
    attempts = []

    def write(conn: sa.Connection) -> int:
        attempts.append(conn.connection.dbapi_connection)
        if len(attempts) == 1:  # this connection is now in the middle of a command nobody reads
            conn.connection.dbapi_connection.pgconn.send_query(b"SELECT 1")
        return int(conn.exec_driver_sql("SELECT 41 + 1").scalar_one())

    assert st.transaction(write) == 42
    assert len(attempts) == 2 and attempts[1] is not attempts[0]  # retried on a new connection
