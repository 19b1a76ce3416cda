"""Stored samples: 0/1 samples as bits, others as float64, rows of either age read back exactly, in order."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from studyhall.optimizer import Float, Orchestrator, summarize
from studyhall.storage import _migrate, connect
from studyhall.storage._retry import setup_retry
from studyhall.storage._samples import BITS, F8, decode_samples, encode_samples, read_trial_samples
from studyhall.storage._schema import trial_metrics
from studyhall.storage._trials import read_study_samples
from tests.conftest import MYSQL_ADMIN, PG_ADMIN

SPACE = {"x": Float(0, 1)}
_RNG = np.random.default_rng(7)
CASES = {
    "a 0": ([0.0], BITS),
    "a 1": ([1.0], BITS),
    "3 of 4": ([1.0, 0.0, 1.0, 1.0], BITS),
    "8 ones": ([1.0] * 8, BITS),
    "9": ([0.0] * 8 + [1.0], BITS),
    "1,000 pass/fail": ((_RNG.random(1000) < 0.8).astype(float), BITS),
    "1,000,003 pass/fail": ((_RNG.random(1_000_003) < 0.5).astype(float), BITS),
    "-0.0 is not 0": ([-0.0, 1.0, 0.0], F8),
    "0.5": ([0.5], F8),
    "0, 1 and 2": ([0.0, 1.0, 2.0], F8),
    "one float": ([0.123456789], F8),
    "1,000 floats": (_RNG.random(1000), F8),
    "near the float limit": ([1.7e308, -1.7e308, 5e-324, 1.0], F8),
    "integers": ([3.0, 7.0, 1.0, 0.0], F8),
}


@pytest.mark.parametrize("samples, stored_as", CASES.values(), ids=CASES.keys())
def test_samples_encode_and_decode_exactly(samples, stored_as):
    arr = np.asarray(samples, dtype=np.float64)
    samples_format, blob = encode_samples(arr)
    assert samples_format == stored_as
    assert len(blob) == ((arr.size + 7) // 8 + 1 if stored_as == BITS else 8 * arr.size)
    back = decode_samples(samples_format, blob)
    assert back.dtype == np.float64 and back.tobytes() == arr.tobytes()  # bit for bit, in order


def test_every_length_and_pattern_of_a_few_bits_decodes():
    for n in range(1, 18):
        for seed in range(4):
            arr = (np.random.default_rng(seed).random(n) < 0.5).astype(float)
            assert decode_samples(*encode_samples(arr)).tobytes() == arr.tobytes()


def test_a_format_from_a_newer_studyhall_is_refused_by_name():
    with pytest.raises(ValueError, match="format 7.*upgrade studyhall"):
        decode_samples(7, b"\x00\x01")


def test_told_samples_round_trip_on_every_backend(store, study_name):
    study = Orchestrator(store).create_study(study_name, direction="maximize")
    told = {}
    for samples, stored_as in CASES.values():
        if len(samples) > 2000 and store.dialect != "sqlite":
            samples = samples[:200_001]  # the server cases keep their packets small
        arr = np.asarray(samples, dtype=np.float64)
        t = study.ask(SPACE)
        study.tell(t, scores=arr, metrics={"other": arr[::-1]})
        told[t.number] = (arr, stored_as)
    query = sa.select(trial_metrics.c.trial_id, trial_metrics.c.samples_format, trial_metrics.c.samples).where(
        trial_metrics.c.study_id == study._study_id, trial_metrics.c.name == "score"
    )
    with store.engine.connect() as conn:
        stored = {r.trial_id: (r.samples_format, len(r.samples)) for r in conn.execute(query)}
    pooled = read_study_samples(store, study._study_id, "score")
    for number, (arr, stored_as) in told.items():
        trial_id = study.trial_id(number)
        assert stored[trial_id] == (stored_as, len(encode_samples(arr)[1]))
        assert read_trial_samples(store, trial_id, "score").tobytes() == arr.tobytes()
        assert read_trial_samples(store, trial_id, "other").tobytes() == arr[::-1].tobytes()
        assert pooled[number].tobytes() == arr.tobytes()
    assert study.metrics().pooled == summarize(np.concatenate([arr for arr, _ in told.values()]))


def _old_row(study_id: int, trial_id: int, number: int, samples: np.ndarray) -> dict[str, object]:
    """A metrics row as studyhall wrote it before samples_format: float64 samples, whatever they were."""
    s = summarize(samples)
    return {
        "study_id": study_id,
        "trial_id": trial_id,
        "trial_number": number,
        "name": "score",
        **{k: getattr(s, k) for k in ("n", "mean", "std", "min", "p50", "p90", "p99", "max")},
        "histogram": [list(b) for b in s.histogram],
        "samples": samples.astype("<f8").tobytes(),
    }


def test_float64_rows_of_pass_fail_scores_still_read_beside_bits(store, study_name):
    # Rows from before migration 0002 hold 0/1 scores as float64 (samples_format 0, its default).
    study = Orchestrator(store).create_study(study_name, direction="maximize")
    old = (_RNG.random(500) < 0.5).astype(float)
    t_old = study.ask(SPACE)
    study.tell(t_old, 0.5)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(trial_metrics), [_old_row(study._study_id, study.trial_id(0), 0, old)])
    new = (_RNG.random(300) < 0.5).astype(float)
    study.tell(study.ask(SPACE), scores=new)
    assert read_trial_samples(store, study.trial_id(0), "score").tobytes() == old.tobytes()
    assert read_trial_samples(store, study.trial_id(1), "score").tobytes() == new.tobytes()
    assert {k: v.tobytes() for k, v in read_study_samples(store, study._study_id, "score").items()} == {
        0: old.tobytes(),
        1: new.tobytes(),
    }
    c = study.compare(0, 1)
    assert (c.n_a, c.n_b, c.mean_a, c.mean_b) == (500, 300, old.mean(), new.mean())  # each side read back whole


@contextlib.contextmanager
def _scratch(backend: str, request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The URL of an empty database of this test's own."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue(f"{backend}_url")  # the server is up (or the case skips)
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN if backend == "postgresql" else MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {name}" if backend == "postgresql" else f"CREATE DATABASE {name}")
    url = (
        f"{PG_ADMIN}?options=-csearch_path%3D{name}"
        if backend == "postgresql"
        else f"{MYSQL_ADMIN.rsplit('/', 1)[0]}/{name}"
    )
    try:
        yield url
    finally:
        connect(url).close()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE" if backend == "postgresql" else f"DROP DATABASE {name}")
        admin.dispose()


@contextlib.contextmanager
def _engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _alembic(engine: sa.Engine, verb: str, revision: str) -> None:
    cfg = _migrate._config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, revision)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_a_database_at_revision_0001_upgrades_and_downgrades_without_losing_samples(backend, request, tmp_path):
    with _scratch(backend, request, tmp_path) as url, _engine(url) as engine:
        _alembic(engine, "upgrade", "0001")
        old = (_RNG.random(64) < 0.5).astype(float)
        old_table = sa.table(
            "studyhall_trial_metrics",
            *(sa.column(c.name) for c in trial_metrics.c if c.name not in ("id", "samples_format")),
        )
        with engine.begin() as conn:
            conn.execute(
                sa.insert(old_table), [{**_old_row(1, 10**6, 0, old), "histogram": json.dumps([[0.0, 1.0, 64]])}]
            )
        st = connect(url)  # Optuna's tables, then studyhall's migration to the newest revision
        assert _migrate.current(st.engine) == _migrate.head()
        assert read_trial_samples(st, 10**6, "score").tobytes() == old.tobytes()
        study = Orchestrator(st).create_study("after")
        new = (_RNG.random(1000) < 0.5).astype(float)
        study.tell(study.ask(SPACE), scores=new)
        new_id = study.trial_id(0)
        st.close()
        _alembic(engine, "downgrade", "0001")  # bits back to float64 before the column goes
        with engine.connect() as conn:
            query = sa.select(old_table.c.trial_id, old_table.c.samples).where(old_table.c.name == "score")
            rows = {trial_id: blob for trial_id, blob in conn.execute(query)}
        assert np.frombuffer(rows[10**6], "<f8").tobytes() == old.tobytes()
        assert np.frombuffer(rows[new_id], "<f8").tobytes() == new.tobytes()
        _alembic(engine, "upgrade", "head")


@pytest.mark.parametrize(
    "message",
    [
        "(pymysql.err.OperationalError) (1060, \"Duplicate column name 'samples_format'\")",
        "(sqlite3.OperationalError) duplicate column name: samples_format",
        '(psycopg.errors.DuplicateColumn) column "samples_format" of relation "studyhall_trial_metrics" already exists',
    ],
)
def test_processes_adding_the_column_at_once_retry_instead_of_failing(message):
    # Seen on MariaDB with four processes connecting to an empty database at once: its
    # ALTER TABLE does not wait for the winner's migration, the loser's fails outright.
    error = sa.exc.OperationalError("ALTER TABLE studyhall_trial_metrics ADD COLUMN ...", {}, Exception(message))
    assert setup_retry(error)
