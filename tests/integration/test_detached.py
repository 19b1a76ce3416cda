"""Ask in one process, tell in another: who keeps a trial RUNNING, and for how long.

A process that exits normally leaves its untold trials detached (RUNNING, to be told
from anywhere); a process that dies leaves them to be failed as stale; a lease ends
on its own.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from studyhall import Float, InvalidRequest, Orchestrator
from studyhall.storage import connect
from tests._util import python, wait_until

ASK_AND_EXIT = """
import os, sys
from studyhall import Float, Orchestrator
from studyhall.storage import connect
study = Orchestrator(connect(sys.argv[1], heartbeat_interval=1, grace_period=2)).load_study(sys.argv[2])
print(study.ask({"x": Float(0, 1)}).number, flush=True)
if sys.argv[3] == "hang":
    sys.stdin.read()  # stays alive until killed
"""


def ask_in_child(url: str, name: str, mode: str) -> tuple[subprocess.Popen, int]:  # type: ignore[type-arg]
    child = python(ASK_AND_EXIT, url, name, mode, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, int(child.stdout.readline())


@pytest.mark.slow
def test_a_normal_exit_detaches_a_death_reaps(storage_url, study_name):
    st = connect(storage_url, heartbeat_interval=1, grace_period=2)
    study = Orchestrator(st).create_study(study_name, retries=0)
    exited, detached = ask_in_child(storage_url, study_name, "exit")
    exited.communicate(timeout=60)
    assert exited.returncode == 0
    killed, reaped = ask_in_child(storage_url, study_name, "hang")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)

    # The killed process's trial goes stale a grace period after its last beat...
    wait_until(
        lambda: reaped in study.fail_stale_trials() or study.trial(reaped).state.name == "FAIL",
        timeout=30,
        what="the killed process's trial to be failed as stale",
    )
    assert "stale" in study.trial(reaped).user_attrs["error"]
    # ... while the trial of the process that exited normally waits, RUNNING, to be told here.
    assert study.trial(detached).state.name == "RUNNING"
    study.tell(detached, 0.5)
    assert study.trial(detached).value == 0.5


@pytest.mark.slow
def test_a_lease_ends_on_its_own(storage_url, study_name):
    st = connect(storage_url, heartbeat_interval=1, grace_period=2)
    study = Orchestrator(st).create_study(study_name, retries=0)
    lapsed = study.ask({"x": Float(0, 1)}, lease_s=1)
    kept = study.ask({"x": Float(0, 1)}, lease_s=600)
    wait_until(
        lambda: lapsed.number in study.fail_stale_trials() or study.trial(lapsed.number).state.name == "FAIL",
        timeout=30,
        what="the 1 s lease to lapse",
    )
    assert study.trial(kept.number).state.name == "RUNNING"
    study.tell(kept, 1.0)


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), "10", True])
def test_bad_leases(sqlite_url, study_name, lease):
    study = Orchestrator(sqlite_url).create_study(study_name)
    with pytest.raises(InvalidRequest, match="lease_s"):
        study.ask({"x": Float(0, 1)}, lease_s=lease)
    assert study.trials() == []
