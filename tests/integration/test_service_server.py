"""`studyhall serve` as a real uvicorn process on loopback: clients, threads, two servers on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from studyhall.optimizer import Client, Float, Int, InvalidRequest, Orchestrator
from tests._util import ROOT, wait_until

CLI = "from studyhall.optimizer.cli import main; main()"
TOKEN = "t0ken-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "STUDYHALL_TOKEN"}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def serving(url: str, *args: str, token: str | None = TOKEN, n: int = 1) -> Iterator[list[str]]:
    """``n`` `studyhall serve ARGS` processes on free loopback ports; yields their base URLs once /healthz answers."""
    env = {"STUDYHALL_TOKEN": token} if token else None  # the token travels by environment here
    procs, bases = [], []
    for _ in range(n):  # started together: each takes a second or two to import
        port = free_port()
        procs.append(run_cli("serve", "--storage", url, "--port", str(port), "--log-level", "warning", *args, env=env))
        bases.append(f"http://127.0.0.1:{port}")

    def up() -> bool:
        for proc, base in zip(procs, bases):
            if proc.poll() is not None:
                raise AssertionError(f"studyhall serve exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code != 200:
                    return False
            except httpx.TransportError:
                return False
        return True

    try:
        wait_until(up, timeout=30, interval=0.05, what="studyhall serve to answer /healthz")
        yield bases
    finally:
        errors = []
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            errors.append(err)
        for err in errors:
            assert "Traceback" not in err, err[-3000:]


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


def _hammer(
    bases: list[str], name: str, threads: int, per_thread: int, lease_s: float = 60.0
) -> list[tuple[int, float]]:
    """``threads`` clients (spread over ``bases``) each ask and tell ``per_thread`` trials at once."""
    told: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            with Client(bases[i % len(bases)], TOKEN) as c:
                study = c.load_study(name)
                for j in range(per_thread):
                    t = study.ask({"x": Float(0, 1)}, lease_s=lease_s)
                    value = i * 1000 + j  # says which thread told which trial
                    assert study.tell(t, value).value == value
                    with lock:
                        told.append((t.number, value))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=100)
    assert not errors, errors[:3]
    return told


def _assert_exactly(url: str, name: str, told: list[tuple[int, float]]) -> None:
    trials = Orchestrator(url).load_study(name).trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(told)  # none duplicated, none lost
    assert sorted(numbers) == list(range(len(told)))
    assert {t.number: t.value for t in trials} == dict(told)  # each value on the trial it was told for
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_sixteen_threads_ask_and_tell_one_study(sqlite_url, study_name):
    with serving(sqlite_url) as [base]:
        with Client(base, TOKEN) as c:
            c.create_study(study_name, sampler="random")
        told = _hammer([base], study_name, threads=16, per_thread=4)
    _assert_exactly(sqlite_url, study_name, told)


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
        told = _hammer([a, b], study_name, threads=8, per_thread=3)
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

PARTIAL_HEADERS = b"GET /v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the headers never end


def _open(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _answer(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``within`` s."""
    deadline = time.monotonic() + within
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the connection is still open after {within} s (received {data[:200]!r})"
        if select.select([sock], [], [], left)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def test_idle_and_slow_clients_cannot_hold_the_service(sqlite_url):
    limits = (
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
        held = [_open(base) for _ in range(8)]
        for sock in held:
            sock.sendall(PARTIAL_HEADERS)
        # over the cap: answered 503 and closed at once, not left waiting
        with _open(base) as extra:
            refused = _answer(extra, within=5)
        assert refused.startswith(b"HTTP/1.1 503") and b"TooManyConnections" in refused
        # headers that never end: closed after the header timeout, freeing the slots
        for sock in held:
            assert _answer(sock, within=10) == b""
            sock.close()
        assert httpx.get(f"{base}/v1/studies", timeout=5).status_code == 200

        # the next request on a kept-alive connection has the same deadline
        with _open(base) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while not first.endswith(b"}"):  # the end of {"status":"ok"}; the connection stays open
                chunk = kept.recv(65536)
                assert chunk, f"closed after {first!r}"
                first += chunk
            assert first.startswith(b"HTTP/1.1 200")
            kept.sendall(PARTIAL_HEADERS)
            assert _answer(kept, within=10) == b""

        # a body sent a byte at a time: 408 after the body timeout, and the connection closed
        with _open(base) as slow:
            slow.sendall(
                b"POST /v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            deadline = time.monotonic() + 10
            while not select.select([slow], [], [], 0.2)[0]:  # the pace of the trickle, until the answer comes
                assert time.monotonic() < deadline, "a trickled body was still being accepted after 10 s"
                slow.sendall(b" ")
            answer = _answer(slow, within=10)
        assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer
        assert Orchestrator(sqlite_url).study_names() == []

        # issue 13, item 7 on the real server: a rebinding page's Host is refused, an --allow-host name is not
        for host, status in ((b"attacker.example:8765", b"400"), (b"studies.example:8765", b"200")):
            with _open(base) as conn:
                conn.sendall(b"GET /v1/studies HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
                assert _answer(conn, within=10).startswith(b"HTTP/1.1 " + status), host
