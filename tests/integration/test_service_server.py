"""`studyhall serve` as a real uvicorn process on loopback: clients, threads, two servers on PostgreSQL."""

from __future__ import annotations

import contextlib
import select
import subprocess
import threading
import time

import httpx
import pytest

from studyhall.optimizer import Client, Float, Int, InvalidRequest, Orchestrator
from tests._util import python, wait_until
from tests.integration._serving import (
    PARTIAL_HEADERS,
    TOKEN,
    answer,
    assert_exactly,
    free_port,
    hammer,
    open_conn,
    run_cli,
    serving,
)


def test_client_over_a_real_server_with_a_token(sqlite_url, study_name):
    with serving(sqlite_url) as [base]:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/v1/studies").status_code == 401
        assert httpx.get(f"{base}/v1/studies", headers={"Authorization": "Bearer nope"}).status_code == 401
        with pytest.raises(InvalidRequest, match="401 Unauthorized"), Client(base, "nope") as wrong:
            wrong.list_studies()
        with Client(base, TOKEN) as orch:
            study = orch.create_study(study_name, direction="minimize", sampler="tpe", seed=0)
            for _ in range(6):
                t = study.ask({"x": Float(-5, 5), "n": Int(1, 4)})
                study.tell(t, (t.params["x"] - 1) ** 2 + t.params["n"])
            assert study.best_value < 30 and len(study.trials(states=["complete"])) == 6
            docs = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert "/v1/studies/{name}/ask" in docs["paths"]
        # the same rows are there for the in-process API
        assert len(Orchestrator(sqlite_url).load_study(study_name).trials()) == 6


def test_a_non_loopback_host_without_a_token_is_refused():
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--token" in err and "STUDYHALL_TOKEN" in err and "Traceback" not in err


def test_sixteen_threads_ask_and_tell_one_study(sqlite_url, study_name):
    with serving(sqlite_url) as [base]:
        with Client(base, TOKEN) as c:
            c.create_study(study_name, sampler="random")
        told = hammer([base], study_name, threads=16, per_thread=4)
    assert_exactly(sqlite_url, study_name, told)


def test_two_servers_on_one_postgresql_database(postgresql_url, study_name):
    with serving(postgresql_url, n=2) as [a, b], Client(a, TOKEN) as ca, Client(b, TOKEN) as cb:
        ca.create_study(study_name, retries=1, sampler="random")
        sa, sb = ca.load_study(study_name), cb.load_study(study_name)
        # asked on one server, renewed and told on the other
        t = sa.ask({"x": Float(0, 1)}, lease_s=30)
        assert sb.heartbeat(t, lease_s=30) > 0
        assert sb.tell(t, 0.5).state.name == "COMPLETE"
        with pytest.raises(InvalidRequest, match="TrialFinished"):
            sa.tell(t, 0.7)
        # three leases nobody renews: both servers sweep, each trial is failed and retried exactly once
        lost = sa.ask_batch({"x": Float(0, 1)}, k=3, lease_s=1)

        def expired() -> bool:
            # A trial is failed first and its retry enqueued just after: wait for both.
            failed = all(sb.trial(x.number).state.name == "FAIL" for x in lost)
            return failed and len(sa.trials(states=["waiting"])) == len(lost)

        wait_until(expired, timeout=30, interval=0.1, what="both servers to expire the leases")
        retried = sa.trials(states=["waiting"])
        assert sorted(x.user_attrs["retry_of"] for x in retried) == sorted(x.number for x in lost)
        for x in lost:
            assert sb.trial(x.number).user_attrs["failure"] == "lease"
        # the retries come out of both servers' asks with their original parameters, then 8 threads share the study
        again = sa.ask_batch(k=2, lease_s=30) + sb.ask_batch(k=1, lease_s=30)
        assert sorted(tuple(x.params.items()) for x in again) == sorted(tuple(x.params.items()) for x in lost)
        for x in again:
            (sa if x.number % 2 else sb).tell(x, 0.1)
        before = len(sa.trials())
        told = hammer([a, b], study_name, threads=8, per_thread=3)
    trials = Orchestrator(postgresql_url).load_study(study_name).trials()
    numbers = [x.number for x in trials]
    assert len(numbers) == len(set(numbers)) == before + 24
    by_number = {x.number: x.value for x in trials}
    assert all(by_number[n] == v for n, v in told)
    assert not [x for x in trials if x.state.name in ("RUNNING", "WAITING")]


def test_dashboard_serves_the_same_storage(sqlite_url, study_name):
    Orchestrator(sqlite_url).create_study(study_name)
    port = free_port()
    proc = run_cli("dashboard", "--storage", sqlite_url, "--port", str(port))
    try:

        def listed() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2)
            except httpx.TransportError:
                return False
            return r.status_code == 200 and study_name in r.text

        wait_until(listed, timeout=30, interval=0.1, what="optuna-dashboard to list the study")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


# ---- issue 13, item 8: clients that hold connections without finishing a request ------------


@pytest.mark.parametrize(
    "server",
    [("--http", "httptools", "--workers", "2"), ("--http", "h11", "--workers", "1")],
    ids=["httptools-2-workers", "h11-1-worker"],
)
def test_idle_and_slow_clients_cannot_hold_the_service(sqlite_url, server):
    # Both HTTP protocols keep the header deadline; the connection cap counts every worker's connections.
    limits = (
        *server,
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-connections",
        "8",
        "--allow-host",
        "studies.example",
    )
    with serving(sqlite_url, *limits, token=None) as [base]:
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(open_conn(base)) for _ in range(9)]
            for sock in held:
                sock.sendall(PARTIAL_HEADERS)
            # One over the cap: answered 503 and closed at once, not left waiting. (Which one: with
            # several workers each accepts from the shared socket at its own pace, not in connect order.)
            answers = [answer(sock, within=5 if i == 8 else 10) for i, sock in enumerate(held)]
            [refused] = [a for a in answers if a]
            assert refused.startswith(b"HTTP/1.1 503") and b"TooManyConnections" in refused
            # headers that never end: closed after the header timeout (the other eight), freeing the slots
            assert answers.count(b"") == 8
        assert httpx.get(f"{base}/v1/studies", timeout=5).status_code == 200

        # the next request on a kept-alive connection has the same deadline
        with open_conn(base) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while not first.endswith(b"}"):  # the end of {"status":"ok"}; the connection stays open
                chunk = kept.recv(65536)
                assert chunk, f"closed after {first!r}"
                first += chunk
            assert first.startswith(b"HTTP/1.1 200")
            kept.sendall(PARTIAL_HEADERS)
            assert answer(kept, within=10) == b""

        # a body sent a byte at a time: 408 after the body timeout, and the connection closed
        with open_conn(base) as slow:
            slow.sendall(
                b"POST /v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            deadline = time.monotonic() + 10
            while not select.select([slow], [], [], 0.2)[0]:  # the pace of the trickle, until the answer comes
                assert time.monotonic() < deadline, "a trickled body was still being accepted after 10 s"
                slow.sendall(b" ")
            trickled = answer(slow, within=10)
        assert trickled.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in trickled
        assert Orchestrator(sqlite_url).study_names() == []

        # issue 13, item 7 on the real server: a rebinding page's Host is refused, an --allow-host name is not
        for host, status in ((b"attacker.example:8765", b"400"), (b"studies.example:8765", b"200")):
            with open_conn(base) as conn:
                conn.sendall(b"GET /v1/studies HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
                assert answer(conn, within=10).startswith(b"HTTP/1.1 " + status), host


HOLDER = """
import sys
from studyhall.storage import connect
from studyhall.storage._sqlite import turns
st = connect(sys.argv[1])
with turns.taken(st.engine):
    print("holding", flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def test_a_long_write_elsewhere_on_sqlite_does_not_stall_the_services_other_requests(sqlite_url, study_name):
    # On SQLite ask and tell run on the event loop when the write turn is free; when another
    # process holds it they wait on a thread instead, and the loop goes on answering.
    with serving(sqlite_url) as [base], Client(base, TOKEN) as c:
        study = c.create_study(study_name, sampler="random")
        with python(HOLDER, sqlite_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
            assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
            asked: list[object] = []
            asker = threading.Thread(target=lambda: asked.append(study.ask({"x": Float(0, 1)})))
            asker.start()
            for _ in range(3):  # answered while the ask waits for the turn
                t0 = time.monotonic()
                assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
                assert c.load_study(study_name).name == study_name
                assert time.monotonic() - t0 < 5
            assert asker.is_alive() and not asked  # still waiting for the holder's turn
            holder.kill()
        asker.join(30)
        assert len(asked) == 1
        study.tell(asked[0], 0.5)
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    assert [t.state.name for t in trials] == ["COMPLETE"]  # one trial: the refused attempt wrote nothing
