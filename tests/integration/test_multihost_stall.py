"""A host that stalls (SIGSTOP) past the heartbeat grace, then wakes (SIGCONT), cannot overwrite the trials it lost.

Host A runs ``optimize`` with one worker: trial 0 runs (it has its parameter), trial
1 waits in the pool's queue (asked ahead: RUNNING, no parameter). A is stopped. Host
B (this test) finds both stale: trial 0 is failed, trial 1 never began and goes back
to the queue, and B's ask claims it (same number) with its own parameter. A is
continued: its late tell of trial 0 is refused, its worker's ``suggest_float`` on
trial 1 is refused (TrialOwnershipLost) and the trial dropped, and A goes on to
finish a trial of its own. Trial 1 ends with B's parameter and B's value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage import connect
from tests._util import python, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.multihost]

OBJ = "tests.optimizer.optimize_objectives"
HOST_A = f"""
import json, sys
from studyhall.optimizer import Orchestrator
from studyhall.storage import connect
study = Orchestrator(connect(sys.argv[1], heartbeat_interval=1, grace_period=2)).load_study(sys.argv[2])
report = study.optimize("{OBJ}:sleepy", n_trials=3, workers=1, progress=False)
print(json.dumps(report.as_dict()))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_stalled_host_wakes_to_find_its_trials_refused(backend, request, study_name):
    url = request.getfixturevalue(f"{backend}_url")
    st = connect(url, heartbeat_interval=1, grace_period=2)
    orch = Orchestrator(st)
    orch.create_study(study_name, direction="maximize")
    study = orch.load_study(study_name)
    a = python(
        HOST_A,
        url,
        study_name,
        env={"STUDYHALL_TEST_SLEEP": "2.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def one_running_one_queued() -> bool:
            trials = study.trials()
            return [(t.state.name, bool(t.params)) for t in trials] == [("RUNNING", True), ("RUNNING", False)]

        wait_until(one_running_one_queued, timeout=60, what="trial 0 running and trial 1 queued on host A")
        os.killpg(a.pid, signal.SIGSTOP)  # the parent, its heartbeat thread and its worker
        ids = {study.trial_id(0), study.trial_id(1)}
        wait_until(lambda: set(st.stale_trial_ids(study._study_id)) >= ids, timeout=30, what="A's trials to go stale")
        assert study.fail_stale_trials() == [0]
        assert study.trial(1).state.name == "WAITING"
        mine = study.ask({"x": Float(0, 1)})  # host B takes trial 1 over
        assert mine.number == 1
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    try:
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.communicate()
    assert a.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    # trial 0: failed as stale by B, A's late tell refused; trial 1: dropped by A; trial 2: A's own
    assert (report["lost"], report["completed"], report["failed"]) == (1, 1, 1), report
    assert "no longer this process's" in err  # A says why it dropped trial 1
    study.tell(mine, 0.25)
    trials = study.trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "stale" in trials[0].user_attrs["error"]
    assert trials[1].params == mine.params and trials[1].value == 0.25
    assert trials[2].value == trials[2].params["x"]
