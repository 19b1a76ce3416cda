"""A database that cannot be reached is a transient connection problem: retried, then said so.

A host cut off from the network meets "Network is unreachable" (or refused, reset,
timed out) on a fresh connection: its pool, its heartbeat thread or its limiter. That
must be retried with the bounded backoff like a dropped connection, and the error
that outlives the retries must say the connection failed, not that the database
rejected a write.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from studyhall.storage import InvalidRequest, TransientStorageError, connect, is_transient
from studyhall.storage._retry import is_connection_error
from studyhall.storage._storage import Storage

# A loopback port nothing listens on: every connection is refused at once.
CLOSED = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:1/test",
}


def _driver_error(text: str, *args: object) -> sa.exc.OperationalError:
    orig = Exception(*(args or (text,)))
    return sa.exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "error",
    [
        # psycopg on a fresh connection while the host's link is down
        _driver_error(
            'connection is bad: connection to server at "10.213.9.1", port 5432 failed: Network is unreachable'
        ),
        _driver_error('connection failed: connection to server at "10.0.0.1", port 5432 failed: No route to host'),
        _driver_error("connection timeout expired"),
        _driver_error("server closed the connection unexpectedly"),
        # pymysql: the client's code says it, whatever the errno text
        _driver_error("", 2003, "Can't connect to MySQL server on '10.213.9.1' ([Errno 101] Network is unreachable)"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["unreachable", "no-route", "timeout", "closed", "mysql-2003", "reset"],
)
def test_connection_failures_are_transient(error):
    assert is_transient(error) and is_connection_error(error)


@pytest.mark.parametrize(
    "error",
    [
        _driver_error(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed'
        ),
        _driver_error("database is locked"),
    ],
    ids=["bad-password", "locked"],
)
def test_other_failures_are_not_connection_problems(error):
    assert not is_connection_error(error)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_an_unreachable_database_is_retried_then_reported_as_a_connection_problem(backend, request):
    st = Storage(request.getfixturevalue(f"{backend}_url"))  # its own: no other test's heartbeat on its engine
    closed = sa.create_engine(CLOSED[backend])
    attempts = []
    sa.event.listen(closed, "do_connect", lambda *a: attempts.append(1))
    engines = st.engine, st.optuna.engine
    st.engine = st.optuna.engine = closed  # the server is still there; the path to it is not
    try:
        for read in (lambda: st.transaction(lambda c: c.execute(sa.text("SELECT 1"))), st.optuna.get_all_studies):
            attempts.clear()
            with pytest.raises(TransientStorageError) as info:
                read()
            assert len(attempts) == 8  # the bounded backoff's attempts, each a fresh connection
            msg = str(info.value)
            assert msg.startswith("could not reach the database through 8 attempts: the connection failed")
            assert "check the network path" in msg and "rejected" not in msg
    finally:
        st.engine, st.optuna.engine = engines
        closed.dispose()
        st.close()


def test_connect_to_a_closed_port_says_it_could_not_reach_the_database():
    with pytest.raises(
        TransientStorageError, match="could not reach the database through 8 attempts: the connection failed"
    ):
        connect(CLOSED["postgresql"])


def test_grace_and_heartbeat_come_from_the_environment(sqlite_url, monkeypatch):
    monkeypatch.setenv("STUDYHALL_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("STUDYHALL_GRACE_PERIOD", "7")
    st = connect(sqlite_url)
    assert (st.heartbeat_interval, st.grace_period) == (2, 7)
    monkeypatch.setenv("STUDYHALL_GRACE_PERIOD", "soon")
    with pytest.raises(InvalidRequest, match=r"\$STUDYHALL_GRACE_PERIOD='soon' must be a whole number"):
        connect(sqlite_url)


def test_a_silent_postgresql_peer_is_given_up_after_the_grace_period(postgresql_url):
    # A cut-off client must not hold the study's row lock for the kernel's 15 minutes.
    st = connect(postgresql_url, heartbeat_interval=1, grace_period=4)
    setting = st.transaction(lambda c: c.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar())
    assert setting == "4s"
    with st.engine.connect() as conn:
        params = conn.connection.dbapi_connection.info.get_parameters()
    assert (params["tcp_user_timeout"], params["keepalives"], params["keepalives_idle"]) == ("4000", "1", "2")


def test_an_answer_raised_while_handling_a_dropped_connection_is_not_transient():
    # A retried tell finds the trial failed meanwhile: that answer is final, not a connection problem.
    class Changed(Exception):
        pass

    try:
        try:
            raise _driver_error("server closed the connection unexpectedly")
        except sa.exc.OperationalError:
            raise Changed()  # noqa: B904 - the implicit context, as on a retry
    except Changed as exc:
        answer = exc
    assert answer.__context__ is not None and not is_transient(answer)
