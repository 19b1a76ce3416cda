"""Two hosts without database access, on ``studyhall serve`` in the root namespace; one is cut off.

The hosts (network namespaces, see ``multihost_net.py``) reach only the service,
through a forwarder on their gateway address; the service reaches PostgreSQL on
loopback. Each host runs an ask/tell loop with ``optimizer.Client`` and 2 s leases
(no renewals: a trial takes 0.2-0.5 s). Host B is cut off for longer than a lease
while it holds a trial. The service's sweep fails the expired trial ("lease") and
the study's retry policy enqueues it again; when B's link is back, its late tell is
refused with a clear error and nothing it sent is written, and B goes on. At the end
nothing is RUNNING or WAITING, every failed trial is a lease that expired and was
retried exactly once, and no parameter set completed twice.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from studyhall.optimizer import Orchestrator
from tests._util import ROOT, wait_until
from tests.integration.multihost_net import Host, descendants, kill_tree, make_hosts

# One pytest-xdist worker for every test that makes network namespaces: each picks a free
# 10.213.x.0/24 by looking at the routes, which two at once could both pick.
pytestmark = [pytest.mark.slow, pytest.mark.multihost, pytest.mark.xdist_group("netns")]

LEASE_S, GRACE_S, PER_HOST = 2.0, 3, 15
CLIENT = f"""
import json, random, sys, time
from studyhall.optimizer import Client, Float, Int, InvalidRequest, ServiceError
base, name, n, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), open(sys.argv[4], "a")
study = Client(base, timeout=2).load_study(name)
space = {{"x": Float(0, 1), "y": Int(0, 1_000_000)}}

def say(event, **kw):
    log.write(json.dumps({{"event": event, **kw}}) + "\\n")
    log.flush()

def patiently(call, what):
    # the service out of reach (no HTTP status): what a client loop does, try again for a while
    deadline = time.monotonic() + 60
    while True:
        try:
            return call()
        except ServiceError as exc:
            if exc.status is not None or time.monotonic() > deadline:
                raise
            say("unreachable", what=what)
            time.sleep(0.3)

asked = 0
while asked < n or patiently(lambda: study.trials(states=["waiting"]), "trials"):
    t = patiently(lambda: study.ask(space, lease_s={LEASE_S}), "ask")
    asked += 1
    say("asked", number=t.number)
    time.sleep(random.uniform(0.2, 0.5))
    try:
        patiently(lambda: study.tell(t, t.params["x"] + t.params["y"] / 1e6), "tell")
        say("told", number=t.number)
    except InvalidRequest as exc:  # the lease ran out while this host was away: refused, nothing written
        say("refused", number=t.number, error=str(exc))
"""


@contextlib.contextmanager
def serving(url: str, allow: list[str]) -> Iterator[int]:
    """``studyhall serve`` on a free loopback port, answering to the hosts' gateway addresses."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if k != "STUDYHALL_TOKEN"},
        "PYTHONPATH": str(ROOT),
        "STUDYHALL_HEARTBEAT_INTERVAL": "1",
        "STUDYHALL_GRACE_PERIOD": str(GRACE_S),
    }
    cmd = [
        sys.executable,
        "-c",
        "from studyhall.optimizer.cli import main; main()",
        "serve",
        "--storage",
        url,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    for host in allow:
        cmd += ["--allow-host", host]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        return False

    try:
        wait_until(up, timeout=60, interval=0.2, what="studyhall serve to answer")
        yield port
    finally:
        kill_tree(proc)  # type: ignore[arg-type]


def _events(logs: Path, host: str) -> list[dict[str, Any]]:
    path = logs / f"{host}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")] or [{"event": "none"}]


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    """Two hosts; removed at the end."""
    with make_hosts(2) as made:
        yield made


@pytest.mark.timeout(240)
def test_two_service_clients_one_cut_off(hosts, postgresql_url, study_name, tmp_path):
    orch = Orchestrator(postgresql_url)
    study = orch.create_study(study_name, direction="maximize", sampler="random")
    study.retries = 1
    a, b = hosts
    with serving(postgresql_url, [h.gateway for h in hosts]) as port:
        procs = {}
        for h in hosts:
            base = f"http://{h.gateway}:{h.forward(port)}"
            log = tmp_path / f"{h.name}.jsonl"
            cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-c", CLIENT, base, study_name, str(PER_HOST), str(log)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            h.procs.append(p)
            procs[h.name] = p

        def told(n: int) -> bool:
            for name, p in procs.items():  # a client that died says why, at once
                assert p.poll() is None, f"{name} exited {p.returncode}: {p.communicate()[1][-3000:]}"
            return len(study.trials(states=["complete"])) >= n

        wait_until(lambda: told(8), timeout=90, interval=0.2, what="8 trials told")
        # cut host 2 while it evaluates a trial it asked (0.2-0.5 s), not in the middle of a request
        wait_until(
            lambda: _events(tmp_path, "host2")[-1]["event"] == "asked",
            timeout=30,
            interval=0.005,
            what="host 2 to hold a trial",
        )
        b.cut()
        time.sleep(LEASE_S + 4)  # the outage itself, longer than a lease: its length is the point
        b.restore()
        outputs = {}
        for name, p in procs.items():
            try:
                outputs[name] = p.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                kill_tree(p)
                raise AssertionError(f"{name} did not exit") from None
        for name, p in procs.items():
            assert p.returncode == 0, outputs[name][1][-3000:]
        # a trial whose ask answer was lost in the cut is told by nobody: its lease runs out
        wait_until(
            lambda: not study.trials(states=["running", "waiting"]),
            timeout=30,
            interval=0.2,
            what="every trial finished or failed",
        )
    for h in hosts:
        assert not [q for p in h.procs for q in descendants(p) if q.is_running()]

    events = {h.name: _events(tmp_path, h.name) for h in hosts}
    refused = [e for e in events["host2"] if e["event"] == "refused"]
    assert refused, f"host 2 was cut off while holding no trial: the scenario did not happen ({events['host2'][-5:]})"
    assert not [e for e in events["host1"] if e["event"] in ("refused", "unreachable")]

    trials = study.trials()
    by_number = {t.number: t for t in trials}
    for e in refused:  # nothing host 2 sent after its lease ran out was written
        t = by_number[e["number"]]
        assert t.state.name == "FAIL" and t.user_attrs["failure"] == "lease", (t.number, t.state, t.user_attrs)
        assert "lease" in e["error"] or "already finished (FAIL)" in e["error"], (
            e
        )  # told after the expiry, or after the sweep
    retries = collections.Counter(t.user_attrs["retry_of"] for t in trials if "retry" in t.user_attrs)
    for t in trials:
        if t.state.name == "FAIL" and "retry" not in t.user_attrs:
            assert t.user_attrs["failure"] == "lease" and retries[t.number] == 1, (t.number, t.user_attrs)
    params = collections.Counter((t.params["x"], t.params["y"]) for t in trials if t.state.name == "COMPLETE")
    assert max(params.values()) == 1, "a parameter set completed twice"
