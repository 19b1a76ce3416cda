"""A SIGKILLed optimize() run is completed by another process, with nothing left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess

from optimizer import Orchestrator
from storage import connect
from tests._util import python, wait_until

OBJ = "tests.optimizer.optimize_objectives"
RUNNER = f"""
import sys
from optimizer import Orchestrator
from storage import connect
url, name = sys.argv[1], sys.argv[2]
study = Orchestrator(connect(url, heartbeat_interval=1, grace_period=2)).load_study(name)
study.optimize("{OBJ}:sleepy", max_total_trials=10, workers=2, retries=1, progress=False)
"""


def test_sigkilled_optimize_is_resumed_by_another_process(sqlite_url, study_name, monkeypatch):
    st = connect(sqlite_url, heartbeat_interval=1, grace_period=2)
    orch = Orchestrator(st)
    orch.create_study(study_name, direction="maximize")
    p = python(RUNNER, sqlite_url, study_name, env={"STUDYHALL_TEST_SLEEP": "0.4"}, stderr=subprocess.PIPE, text=True)
    study = orch.load_study(study_name)

    def mid_run() -> bool:
        states = [t.state.name for t in study.trials()]
        return states.count("COMPLETE") >= 2 and states.count("RUNNING") == 2

    wait_until(mid_run, timeout=60, interval=0.05, what="two complete and two running trials")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    orphans = {t.number: t.params for t in study.trials(states=["running"])}
    assert orphans  # left behind by the dead process
    wait_until(lambda: set(st.stale_trial_ids(study._study_id)) >= {study._trial_id(n) for n in orphans},
               timeout=30, what="the orphans to go stale")

    monkeypatch.setenv("STUDYHALL_TEST_SLEEP", "0.01")
    resumed = orch.load_study(study_name)  # fails the stale trials, enqueues their retries
    report = resumed.optimize(f"{OBJ}:sleepy", max_total_trials=10, workers=2, retries=1, progress=False)

    assert not resumed.trials(states=["running", "waiting"])
    trials = resumed.trials()
    assert len([t for t in trials if t.state.is_finished()]) == 10
    assert report.completed == report.n_trials > 0
    for number, params in orphans.items():
        dead = resumed.trial(number)
        assert dead.state.name == "FAIL" and "stale" in dead.user_attrs["error"]
        retry = next(t for t in trials if t.user_attrs.get("retry_of") == number)
        assert retry.state.name == "COMPLETE" and retry.params == params
