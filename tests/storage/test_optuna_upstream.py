"""Optuna's own tests, from its source distribution, run on studyhall's storage.

``make test`` fetches the sdist of the installed Optuna (its ``tests/`` are not in
the wheel) into ``.venv/optuna-tests``. Every upstream test parametrized over
Optuna's storage modes runs here on ``studyhall-sqlite``, ``studyhall-postgresql``
and ``studyhall-mysql`` (``optuna_upstream_plugin.py``), in a pytest of its own.

Upstream tests that do not apply, and why:
- ``storages_tests/test_cached_storage.py``: Optuna's ``_CachedStorage`` wrapper
  around ``RDBStorage``; studyhall's cache is inside its storage and is exercised by
  every test below.
- ``storages_tests/rdb_tests/``: ``RDBStorage`` itself (URL templates, engine
  kwargs, its private ``_get_trials``, alembic upgrades of old databases; studyhall
  runs Optuna's own schema set-up and version check, see ``storage/_optuna.py``).
- ``test_callbacks.py``, ``test_grpc.py``, ``test_with_server.py`` and the heartbeat
  cases that hard-code ``"sqlite"``: they build Optuna's ``RDBStorage`` themselves
  (``-k studyhall`` leaves them out).
- the two cases in ``DOES_NOT_APPLY`` below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from tests.conftest import IN_CI, MYSQL_ADMIN, PG_ADMIN, SESSION_TAG

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / ".venv" / "optuna-tests" / f"optuna-{optuna.__version__}"
FILES = [
    "tests/storages_tests/test_storages.py",
    "tests/storages_tests/test_heartbeat.py",
    "tests/study_tests/test_study.py",
    "tests/trial_tests/test_trial.py",
    "tests/trial_tests/test_frozen.py",
]
# The storage contract and heartbeats on every backend; the study and trial tests (the
# storage through Optuna's API, four times as many cases) on SQLite, to keep the suite short.
SELECT = "studyhall and (test_storages or test_heartbeat or sqlite)"
DOES_NOT_APPLY = {
    # Optuna exempts RDBStorage: ids come from the table's rowid, which SQLite reuses
    # after the newest study is deleted. Same schema, same behaviour.
    "tests/storages_tests/test_storages.py::TestStorage::test_create_new_study_unique_id[studyhall-sqlite]",
    # RDBStorage warns that its heartbeat_interval is experimental; studyhall's heartbeat
    # is a supported feature and warns nothing.
    "tests/storages_tests/test_heartbeat.py::test_heartbeat_experimental_warnings",
    # Optuna's MySQL schema keeps whole seconds (DATETIME); RDBStorage fails these four
    # on MariaDB too (tests/storage/test_optuna_storage.py holds them as strict xfails).
    "tests/storages_tests/test_storages.py::TestStorage::test_create_new_trial[studyhall-mysql]",
    "tests/storages_tests/test_storages.py::TestStorage::test_create_new_trial_with_template_trial"
    "[studyhall-mysql-start_time0-complete_time0]",
    "tests/storages_tests/test_storages.py::TestStorage::test_get_trial[studyhall-mysql]",
    "tests/storages_tests/test_storages.py::TestStorage::test_get_all_trials[studyhall-mysql]",
}


@pytest.fixture
def scratch_databases() -> Iterator[dict[str, str]]:
    """A PostgreSQL schema and a MariaDB database for the upstream run alone."""
    name = f"up_{SESSION_TAG}"
    pg = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    my = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
    with pg.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {name}")
    with my.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield {
        "STUDYHALL_UPSTREAM_PG": f"{PG_ADMIN}?options=-csearch_path%3D{name}",
        "STUDYHALL_UPSTREAM_MYSQL": MYSQL_ADMIN.rsplit("/", 1)[0] + f"/{name}",
    }
    with pg.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
    with my.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name}")
    pg.dispose()
    my.dispose()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_optunas_own_tests_pass_on_studyhalls_storage(scratch_databases: dict[str, str]) -> None:
    if not UPSTREAM.is_dir():
        msg = f"Optuna's tests are not at {UPSTREAM}; `make test` fetches them (make optuna-tests)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    deselect = [arg for node in DOES_NOT_APPLY for arg in ("--deselect", node)]
    env = {
        **os.environ,
        **scratch_databases,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "optuna_upstream_plugin", "-p", "no:cacheprovider",
         "--color=no", "-W", "ignore::pytest.PytestRemovedIn10Warning", "-k", SELECT, *deselect, *FILES],
        cwd=UPSTREAM, env=env, capture_output=True, text=True, timeout=580, check=False,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary
