"""A study left by a dead process is resumed by another, with nothing left RUNNING."""

from __future__ import annotations

import subprocess

import pytest

from studyhall.optimizer import Orchestrator
from studyhall.storage import connect
from tests._util import python, wait_until

CRASHER = """
import os, sys
from studyhall.optimizer import Orchestrator, Float, Categorical
from studyhall.storage import connect
url, name = sys.argv[1], sys.argv[2]
orch = Orchestrator(connect(url, heartbeat_interval=1, grace_period=2))
study = orch.create_study(name, direction="maximize", retries=1)
space = {"x": Float(0, 1), "c": Categorical(["a", "b"])}
for _ in range(3):
    t = study.ask(space)
    study.tell(t, scores=[t.params["x"], 1.0])
left = study.ask(space)
from tests._util import wait_until
wait_until(lambda: left.trial_id in study.storage.heartbeat.tracked(), what="heartbeat")
# Wait for the heartbeat thread's first beat, then die without telling.
from optuna.storages._rdb import models
import sqlalchemy as sa
hb = models.TrialHeartbeatModel.__table__
wait_until(lambda: study.storage.transaction(lambda c: c.execute(sa.select(hb.c.trial_id).where(hb.c.trial_id == left.trial_id)).first()), what="first beat")
print(left.number, flush=True)
os._exit(9)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_second_process_resumes_and_retries_the_running_trial(request, backend, study_name):
    url = request.getfixturevalue(f"{backend}_url")
    p = python(CRASHER, url, study_name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 9, err[-3000:]
    left = int(out.strip())

    orch = Orchestrator(connect(url, heartbeat_interval=1, grace_period=2))
    study = orch.load_study(study_name)
    assert [t.state.name for t in study.trials()][:3] == ["COMPLETE"] * 3
    # Once the grace period has passed, loading (or asking) fails the orphan and retries it.
    wait_until(
        lambda: orch.load_study(study_name).trial(left).state.name == "FAIL", timeout=20, what="stale trial failed"
    )
    failed = study.trial(left)
    assert "stale" in failed.user_attrs["error"]
    retry = study.ask()
    assert retry.params == failed.params
    assert study.trial(retry.number).user_attrs == {"retry_of": left, "retry": 1}
    study.tell(retry, scores=[retry.params["x"], 1.0])
    assert not study.trials(states=["running", "waiting"])
    assert len(study.trials(states=["complete"])) == 4
