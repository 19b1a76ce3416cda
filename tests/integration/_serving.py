"""`studyhall serve` as a real process on loopback, for the tests that talk to it over sockets."""

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

from studyhall.optimizer import Client, Float, Orchestrator
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
def serving(
    url: str,
    *args: str,
    token: str | None = TOKEN,
    n: int = 1,
    procs: list[subprocess.Popen[str]] | None = None,
    logs: list[str] | None = None,
) -> Iterator[list[str]]:
    """``n`` `studyhall serve ARGS` processes on free loopback ports; yields their base URLs once /healthz answers.

    ``procs``, if given, receives the processes (to signal them), and ``logs`` what each wrote to stderr
    once it exited; each must exit without a traceback.
    """
    env = {"STUDYHALL_TOKEN": token} if token else None  # the token travels by environment here
    procs = [] if procs is None else procs
    bases = []
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
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            errors.append(err)
        if logs is not None:
            logs.extend(errors)
        for err in errors:
            assert "Traceback" not in err, err[-3000:]


def hammer(
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


def assert_exactly(url: str, name: str, told: list[tuple[int, float]]) -> None:
    trials = Orchestrator(url).load_study(name).trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(told)  # none duplicated, none lost
    assert sorted(numbers) == list(range(len(told)))
    assert {t.number: t.value for t in trials} == dict(told)  # each value on the trial it was told for
    assert all(t.state.name == "COMPLETE" for t in trials)


PARTIAL_HEADERS = b"GET /v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the headers never end


def open_conn(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket, within: float) -> bytes:
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
