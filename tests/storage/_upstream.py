"""Optuna's own tests, from its source distribution, run on studyhall's storage.

``make test`` fetches the sdist of the installed Optuna (its ``tests/`` are not in
the wheel) into ``.venv/optuna-tests``. Every upstream test parametrized over
Optuna's storage modes runs here on ``studyhall-sqlite``, ``studyhall-postgresql``
and ``studyhall-mysql`` (``optuna_upstream_plugin.py``), in pytests of their own
(``PARTS``, at once).

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
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from tests._util import wait_until
from tests.conftest import MYSQL_ADMIN, PG_ADMIN, SESSION_TAG

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / ".venv" / "optuna-tests" / f"optuna-{optuna.__version__}"
HEARTBEAT = "tests/storages_tests/test_heartbeat.py"
FILES = [
    "tests/storages_tests/test_storages.py",
    HEARTBEAT,
    "tests/study_tests/test_study.py",
    "tests/trial_tests/test_trial.py",
    "tests/trial_tests/test_frozen.py",
]
# The run in four pytests at once, each on databases of its own (the plugin empties its tables
# for every case): the heartbeat cases are most of the time (they sleep through Optuna's grace
# periods, 2.5 minutes end to end) and wait rather than compute, so they go one backend each
# beside the rest. Together the parts select exactly FILES with SELECT.
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "heartbeat-sqlite": ([HEARTBEAT], ["sqlite"]),
    "heartbeat-postgresql": ([HEARTBEAT], ["postgresql"]),
    "heartbeat-mysql": ([HEARTBEAT], ["mysql"]),
    "rest": ([f for f in FILES if f != HEARTBEAT], ["sqlite", "postgresql", "mysql"]),
}
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
    """Optuna's suite in pytests of their own (``PARTS``), started as soon as collection ends.

    It takes minutes and waits on databases and sleeps much of the time, so it runs beside
    the rest of the session instead of after it: ``tests/conftest.py`` starts it when its
    test is selected, in the pytest-xdist controller when there are workers. Everything the
    test needs is in files under ``folder`` (a worker may be another process): ``problem``
    when the run could not start, and per part its output ``<part>.out`` and, once it ends,
    its exit code ``<part>.code``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"up_{SESSION_TAG}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pg = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        self._my = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
        self._made: list[tuple[sa.Engine, str]] = []

    def start(self) -> None:
        """Create the scratch databases and start the parts; a problem goes to ``folder/problem``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "started").touch()
        if not UPSTREAM.is_dir():
            self._problem(f"Optuna's tests are not at {UPSTREAM}; `make test` fetches them (make optuna-tests)")
            return
        try:
            for part in PARTS:
                self._scratch(part)
        except Exception as exc:  # noqa: BLE001 - any failure means "no server"
            self._problem(
                f"a database server is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            )
            return
        deselect = [arg for node in DOES_NOT_APPLY for arg in ("--deselect", node)]
        for part, (files, modes) in PARTS.items():
            db = self._db(part)
            env = {
                **os.environ,
                "STUDYHALL_UPSTREAM_MODES": ",".join(modes),
                "STUDYHALL_UPSTREAM_PG": f"{PG_ADMIN}?options=-csearch_path%3D{db}",
                "STUDYHALL_UPSTREAM_MYSQL": MYSQL_ADMIN.rsplit("/", 1)[0] + f"/{db}",
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
            }
            with open(self.folder / f"{part}.out", "wb") as out:
                proc = self.procs[part] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        "-q",
                        "-p",
                        "optuna_upstream_plugin",
                        "-p",
                        "no:cacheprovider",
                        "-p",
                        "no:xdist",
                        "--color=no",
                        "-W",
                        "ignore::pytest.PytestRemovedIn10Warning",
                        "-k",
                        SELECT,
                        *deselect,
                        *files,
                    ],
                    cwd=UPSTREAM,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            threading.Thread(target=self._record_exit, args=(part, proc), daemon=True).start()

    def _db(self, part: str) -> str:
        return f"{self.name}_{part.replace('-', '_')}"

    def _scratch(self, part: str) -> None:
        db = self._db(part)
        modes = PARTS[part][1]
        if "postgresql" in modes:
            with self._pg.connect() as c:
                c.exec_driver_sql(f"CREATE SCHEMA {db}")
            self._made.append((self._pg, f"DROP SCHEMA {db} CASCADE"))
        if "mysql" in modes:
            with self._my.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE {db}")
            self._made.append((self._my, f"DROP DATABASE {db}"))

    def _problem(self, text: str) -> None:
        (self.folder / "problem").write_text(text)

    def _record_exit(self, part: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        tmp = self.folder / f"{part}.code.tmp"
        tmp.write_text(str(code))
        tmp.rename(self.folder / f"{part}.code")  # whole, or not there

    def close(self) -> None:
        """Stop the parts that still run, and drop the scratch databases."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for engine, drop in self._made:
            with engine.connect() as c:
                c.exec_driver_sql(drop)
        self._pg.dispose()
        self._my.dispose()


def verdicts(folder: Path, timeout: float) -> dict[str, tuple[int, str]]:
    """Each part's exit code and output once it ends (from any process); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    out: dict[str, tuple[int, str]] = {}
    for part in PARTS:
        code = folder / f"{part}.code"
        left = max(deadline - time.monotonic(), 0.0)
        wait_until(code.exists, timeout=left, interval=0.2, what=f"the end of Optuna's tests ({part})")
        out[part] = int(code.read_text()), (folder / f"{part}.out").read_text(errors="replace")
    return out


def problem(folder: Path) -> str | None:
    """Why the run did not start, if it did not."""
    path = folder / "problem"
    return path.read_text() if path.exists() else None


def folder_of(config: pytest.Config) -> Path:
    """The folder of this session's run: the controller's on a pytest-xdist worker."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and DIR_KEY in workerinput:
        return Path(workerinput[DIR_KEY])
    if DIR_STASH not in config.stash:
        config.stash[DIR_STASH] = Path(tempfile.mkdtemp(prefix="studyhall-upstream-"))
    return config.stash[DIR_STASH]


def started(folder: Path) -> bool:
    """Whether a run was started with its files in ``folder``."""
    return (folder / "started").exists()


RUN_KEY = pytest.StashKey[UpstreamRun]()
"""Where tests/conftest.py keeps the run it started, to stop it at the end of the session."""
DIR_STASH = pytest.StashKey[Path]()
DIR_KEY = "studyhall_upstream_dir"
"""The folder of the run's files, in ``config.workerinput`` of a pytest-xdist worker."""
