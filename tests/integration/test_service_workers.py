"""`studyhall serve --workers N`: several processes on one port, supervised, on one database."""

from __future__ import annotations

import signal
import socket
import subprocess

import httpx
import psutil
import pytest

from studyhall.optimizer import Client, Float
from tests._util import wait_until
from tests.integration._serving import TOKEN, assert_exactly, hammer, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def workers_of(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The live service workers of the `studyhall serve` process ``proc``."""
    workers = []
    for kid in psutil.Process(proc.pid).children():
        try:
            if kid.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(kid.cmdline()):
                workers.append(kid)
        except psutil.Error:  # gone (or a zombie) meanwhile
            pass
    return workers


def refused(base: str) -> bool:
    """Whether nothing accepts connections at ``base`` any more."""
    host, port = base.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_workers_on_one_sqlite_file_tell_each_trial_exactly_once(sqlite_url, study_name):
    procs: list[subprocess.Popen[str]] = []
    with serving(sqlite_url, "--workers", "3", procs=procs) as [base]:
        assert len(workers_of(procs[0])) == 3
        with Client(base, TOKEN) as c:
            c.create_study(study_name, sampler="random")
        told = hammer([base], study_name, threads=16, per_thread=4)
    assert_exactly(sqlite_url, study_name, told)


def test_a_study_deleted_and_created_again_is_the_new_one_in_every_process(sqlite_url, study_name):
    # Two service processes (as two workers would be), each caching the study and its trials.
    def post(base: str, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{base}/v1/studies{path}", json=body, headers=AUTH, timeout=30)

    space = {"x": {"type": "float", "low": 0, "high": 1}}
    with serving(sqlite_url, "--workers", "1", n=2) as [a, b]:
        assert post(a, "", {"name": study_name}).status_code == 201
        for base in (a, b):
            [trial] = post(base, f"/{study_name}/ask", {"space": space}).json()["trials"]
            assert post(base, f"/{study_name}/trials/{trial['number']}/tell", {"value": 1}).status_code == 200
        assert httpx.delete(f"{a}/v1/studies/{study_name}", headers=AUTH).status_code == 204
        assert post(a, "", {"name": study_name}).status_code == 201
        [trial] = post(a, f"/{study_name}/ask", {"space": space}).json()["trials"]
        assert trial["number"] == 0
        told = post(b, f"/{study_name}/trials/0/tell", {"value": 2})
        assert told.status_code == 200 and told.json()["value"] == 2, told.text


def test_a_worker_that_dies_is_replaced(sqlite_url, study_name):
    procs: list[subprocess.Popen[str]] = []
    logs: list[str] = []
    with serving(sqlite_url, "--workers", "2", procs=procs, logs=logs) as [base]:
        [victim, survivor] = workers_of(procs[0])
        victim.send_signal(signal.SIGKILL)
        wait_until(
            lambda: len(pids := {w.pid for w in workers_of(procs[0])}) == 2 and victim.pid not in pids,
            timeout=30,
            what="a replacement worker",
        )
        assert survivor.is_running()
        with Client(base, TOKEN) as c:
            study = c.create_study(study_name)
            for _ in range(4):
                study.tell(study.ask({"x": Float(0, 1)}), 1.0)
    assert f"service worker {victim.pid} was killed by SIGKILL; starting another" in logs[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_worker(sqlite_url, sig):
    procs: list[subprocess.Popen[str]] = []
    with serving(sqlite_url, "--workers", "2", procs=procs) as [base]:
        workers = workers_of(procs[0])
        procs[0].send_signal(sig)
        assert procs[0].wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive and refused(base)


def test_a_killed_supervisor_leaves_no_worker_serving(sqlite_url):
    procs: list[subprocess.Popen[str]] = []
    with serving(sqlite_url, "--workers", "2", procs=procs) as [base]:
        workers = workers_of(procs[0])
        procs[0].kill()  # no chance to stop its workers: they notice on their own
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive and refused(base)
