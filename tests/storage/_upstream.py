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
import tempfile
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from tests.conftest import MYSQL_ADMIN, PG_ADMIN, SESSION_TAG

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


class UpstreamRun:
    """Optuna's suite in a pytest of its own, started as soon as collection ends.

    It takes minutes and is one subprocess waiting on databases much of the time, so it
    runs beside the rest of the session instead of after it (``tests/conftest.py``
    starts it when this test is selected); the test collects its verdict.
    """

    def __init__(self) -> None:
        self.name = f"up_{SESSION_TAG}"
        self.out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - open while the run lasts; close() closes it
        self.proc: subprocess.Popen[str] | None = None
        self.problem: str | None = None
        self._pg = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        self._my = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
        self._made: list[sa.Engine] = []

    def start(self) -> None:
        """Create the scratch databases and start the run; a problem is kept for the test to report."""
        if not UPSTREAM.is_dir():
            self.problem = f"Optuna's tests are not at {UPSTREAM}; `make test` fetches them (make optuna-tests)"
            return
        try:
            with self._pg.connect() as c:
                c.exec_driver_sql(f"CREATE SCHEMA {self.name}")
            self._made.append(self._pg)
            with self._my.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE {self.name}")
            self._made.append(self._my)
        except Exception as exc:  # noqa: BLE001 - any failure means "no server"
            self.problem = (
                f"a database server is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            )
            return
        deselect = [arg for node in DOES_NOT_APPLY for arg in ("--deselect", node)]
        env = {
            **os.environ,
            "STUDYHALL_UPSTREAM_PG": f"{PG_ADMIN}?options=-csearch_path%3D{self.name}",
            "STUDYHALL_UPSTREAM_MYSQL": MYSQL_ADMIN.rsplit("/", 1)[0] + f"/{self.name}",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "optuna_upstream_plugin",
                "-p",
                "no:cacheprovider",
                "--color=no",
                "-W",
                "ignore::pytest.PytestRemovedIn10Warning",
                "-k",
                SELECT,
                *deselect,
                *FILES,
            ],
            cwd=UPSTREAM,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self, timeout: float) -> tuple[int, str]:
        """The run's exit code and its output, once it ends."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.out.seek(0)
        return code, self.out.read()

    def close(self) -> None:
        """Stop the run if it still goes, and drop the scratch databases."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        for engine in self._made:
            with engine.connect() as c:
                c.exec_driver_sql(
                    f"DROP SCHEMA {self.name} CASCADE" if engine is self._pg else f"DROP DATABASE {self.name}"
                )
        self._pg.dispose()
        self._my.dispose()


RUN_KEY = pytest.StashKey[UpstreamRun]()
"""Where tests/conftest.py leaves the run it started for the test to collect."""
