"""storage's hot-path helpers (driver statements, attribute JSON) on every backend."""

from __future__ import annotations

import json
import random

import pytest
import sqlalchemy as sa

from studyhall.storage import InvalidRequest, _sql, connect
from studyhall.storage._limits import attr_json
from studyhall.storage._optuna import table
from studyhall.storage._retry import is_transient
from studyhall.storage._schema import trial_metrics
from studyhall.storage._sql import driver_upsert


def _row(trial_id: int, mean: float, samples: bytes) -> dict[str, object]:
    return {
        "study_id": 1,
        "trial_id": trial_id,
        "trial_number": 0,
        "name": "score",
        "n": 2,
        "mean": mean,
        "histogram": json.dumps([[0.0, 1.0, 2]]),  # a JSON column takes its text
        "samples": samples,
    }


def test_driver_upsert_inserts_then_overwrites_like_upsert(store):
    ids = random.sample(range(10**6, 10**9), 2)  # the server databases are shared by the session's tests
    read = sa.select(trial_metrics.c.trial_id, trial_metrics.c.mean, trial_metrics.c.histogram, trial_metrics.c.samples)
    read = read.where(trial_metrics.c.trial_id.in_(ids)).order_by(trial_metrics.c.trial_id)
    with store.engine.begin() as conn:
        driver_upsert(
            conn, trial_metrics, [_row(ids[0], 0.5, b"\x00\x01"), _row(ids[1], 0.25, b"")], ("trial_id", "name")
        )
        driver_upsert(conn, trial_metrics, [_row(ids[0], 0.75, b"\xff" * 9000)], ("trial_id", "name"))
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(read)]
    first, second = sorted(ids)
    by_id = {ids[0]: (0.75, b"\xff" * 9000), ids[1]: (0.25, b"")}
    assert rows == [(i, by_id[i][0], [[0.0, 1.0, 2]], by_id[i][1]) for i in (first, second)]


def test_driver_upsert_errors_are_sqlalchemys(store):
    # The driver's errors still come translated (and a dropped connection invalidated): the
    # retries and the storage's error messages see what they see for Core statements.
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        driver_upsert(conn, trial_metrics, [{**_row(10**9, 0.5, b""), "name": None}], ("trial_id", "name"))


def test_driver_statements_run_on_the_drivers_cursor_inside_a_transaction(store, monkeypatch):
    # exec_driver_sql costs 10-15 µs a statement on a tell's path; the cursor a few.
    with store.engine.begin() as conn:
        monkeypatch.setattr(conn, "exec_driver_sql", _forbidden)  # after SQLite's BEGIN IMMEDIATE, which takes it
        driver_upsert(conn, trial_metrics, [_row(random.randrange(10**6, 10**9), 0.5, b"")], ("trial_id", "name"))


def _forbidden(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("took exec_driver_sql")


def test_driver_statements_are_seen_by_cursor_listeners_and_outside_transactions(store):
    # Tracing (before/after_cursor_execute) sees every statement, and a connection outside a
    # transaction begins one as SQLAlchemy would: both take exec_driver_sql.
    seen: list[str] = []

    def listen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    trial_id = random.randrange(10**6, 10**9)
    sa.event.listen(store.engine, "before_cursor_execute", listen)
    try:
        with store.engine.begin() as conn:
            driver_upsert(conn, trial_metrics, [_row(trial_id, 0.5, b"")], ("trial_id", "name"))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", listen)
    assert any("studyhall_trial_metrics" in s for s in seen)
    with store.engine.connect() as conn:  # no begin(): SQLAlchemy's autobegin
        driver_upsert(conn, trial_metrics, [_row(trial_id, 0.25, b"")], ("trial_id", "name"))
        conn.commit()
    with store.engine.connect() as conn:
        query = sa.select(trial_metrics.c.mean).where(trial_metrics.c.trial_id == trial_id)
        assert conn.execute(query).scalar_one() == 0.25


def test_sqlalchemys_error_handler_is_there_for_the_drivers_cursor():
    # Without it every driver statement quietly takes the slower exec_driver_sql: say so here.
    assert _sql._HANDLE_ERROR is not None


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_connection_dropped_under_a_driver_statement_is_invalidated(backend, request):
    # What storage/_retry.py retries on: SQLAlchemy's DBAPIError with connection_invalidated,
    # and the pool's connection thrown away, exactly as for exec_driver_sql.
    store = connect(request.getfixturevalue(f"{backend}_url"))
    pid_sql, kill = (
        ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})")
        if backend == "postgresql"
        else ("SELECT CONNECTION_ID()", "KILL {}")
    )
    admin = sa.create_engine(store.url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa.exc.DBAPIError) as info, store.engine.begin() as conn:
            pid = conn.exec_driver_sql(pid_sql).scalar_one()
            with admin.connect() as other:
                other.exec_driver_sql(kill.format(pid))
            driver_upsert(conn, trial_metrics, [_row(random.randrange(10**6, 10**9), 0.5, b"")], ("trial_id", "name"))
        assert info.value.connection_invalidated
        assert is_transient(info.value)
    finally:
        admin.dispose()


def test_driver_upsert_refuses_a_column_that_needs_bind_processing(store):
    with pytest.raises(TypeError, match="value_type"), store.engine.begin() as conn:
        row = {"trial_id": 1, "objective": 0, "value": 1.0, "value_type": "FINITE"}
        driver_upsert(conn, table("TrialValueModel"), [row], ("trial_id", "objective"))


def test_driver_upsert_splits_many_rows_under_sqlites_bound_value_limit(store):
    trial_id = random.randrange(10**6, 10**9)
    rows = [{**_row(trial_id, i / 300, b""), "name": f"m{i:03d}"} for i in range(300)]  # 2,400 values: 3 statements
    with store.engine.begin() as conn:
        driver_upsert(conn, trial_metrics, rows, ("trial_id", "name"))
    read = sa.select(trial_metrics.c.name, trial_metrics.c.mean).where(trial_metrics.c.trial_id == trial_id)
    with store.engine.connect() as conn:
        assert sorted(tuple(r) for r in conn.execute(read)) == [(f"m{i:03d}", i / 300) for i in range(300)]


@pytest.mark.parametrize(
    "value",
    [0.5, -0.0, 1e-300, 1e16, 2.0**60, 0.1 + 0.2, float("nan"), float("inf"), 7, -(2**70), True, None, "x", [1.5, 2]],
)
def test_attr_json_of_a_number_is_json_dumps(value):
    # floats and ints skip json.dumps on a tell's path: the same text, byte for byte
    assert attr_json("user attribute", "score.mean", value) == json.dumps(value)


def test_attr_json_still_refuses_a_bad_key_after_good_ones():
    attr_json("user attribute", "score.p50", 1.0)
    for bad in ("", "a\x00b", 3):
        with pytest.raises(InvalidRequest):
            attr_json("user attribute", bad, 1.0)
