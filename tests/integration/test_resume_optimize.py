"""A SIGKILLed optimize() run is completed by another process, with nothing left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import sqlalchemy as sa
from optuna.storages._rdb import models

from studyhall.optimizer import Orchestrator
from studyhall.storage import connect
from tests._util import python, wait_until

OBJ = "tests.optimizer.optimize_objectives"
RUNNER = f"""
import sys
from studyhall.optimizer import Orchestrator
from studyhall.storage import connect
url, name = sys.argv[1], sys.argv[2]
study = Orchestrator(connect(url, heartbeat_interval=1, grace_period=2)).load_study(name)
study.optimize("{OBJ}:sleepy", max_total_trials=10, workers=2, retries=1, progress=False)
"""


def test_sigkilled_optimize_is_resumed_by_another_process(sqlite_url, study_name, monkeypatch):
    st = connect(sqlite_url, heartbeat_interval=1, grace_period=2)
    orch = Orchestrator(st)
    orch.create_study(study_name, direction="maximize")
    # Trials 0 and 1 finish at once, 2 and 3 hang, 4 waits in the pool's queue for a free worker:
    # the runner is then only waiting, asking nothing.
    env = {"STUDYHALL_TEST_FAST": "2", "STUDYHALL_TEST_SLEEP": "60"}
    p = python(RUNNER, sqlite_url, study_name, env=env, stderr=subprocess.PIPE, text=True)
    study = orch.load_study(study_name)
    hb = models.TrialHeartbeatModel.__table__

    def mid_run() -> bool:
        trials = study.trials()
        if [(t.state.name, bool(t.params)) for t in trials] != [("COMPLETE", True)] * 2 + [("RUNNING", True)] * 2 + [
            ("RUNNING", False)
        ]:
            return False
        running = [t._trial_id for t in trials[2:4]]
        query = sa.select(sa.func.count()).select_from(hb).where(hb.c.trial_id.in_(running))
        return st.transaction(lambda c: c.execute(query).scalar_one()) == 2  # beaten once, so they can go stale

    try:
        wait_until(mid_run, timeout=60, interval=0.05, what="two complete and two running trials")
        workers = psutil.Process(p.pid).children(recursive=True)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert len(workers) >= 2  # the pool's workers die with it rather than run on as orphans
    wait_until(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
        timeout=10,
        what="the dead process's workers to exit",
    )
    orphans = {t.number: t.params for t in study.trials(states=["running"])}
    assert sorted(orphans) == [2, 3, 4] and not orphans[4]  # 4 never ran
    wait_until(
        lambda: set(st.stale_trial_ids(study._study_id)) >= {study._trial_id(n) for n in orphans},
        timeout=30,
        what="the orphans to go stale",
    )

    monkeypatch.setenv("STUDYHALL_TEST_SLEEP", "0.01")
    resumed = orch.load_study(study_name)  # fails the stale trials, enqueues their retries
    report = resumed.optimize(f"{OBJ}:sleepy", max_total_trials=10, workers=2, retries=1, progress=False)

    assert not resumed.trials(states=["running", "waiting"])
    trials = resumed.trials()
    # max_total_trials counts every trial but retries: 10 of those, each finished, plus the retries
    first = [t for t in trials if "retry" not in t.user_attrs]
    assert len(first) == 10 and all(t.state.is_finished() for t in trials)
    assert report.completed == report.n_trials > 0
    for number, params in orphans.items():
        orphan = resumed.trial(number)
        retries = [t for t in trials if t.user_attrs.get("retry_of") == number]
        if params:
            assert orphan.state.name == "FAIL" and "stale" in orphan.user_attrs["error"]
            assert [(t.state.name, t.params) for t in retries] == [("COMPLETE", params)]
        else:  # it never began: back in the queue, then run by the resumed process
            assert orphan.state.name == "COMPLETE" and "error" not in orphan.user_attrs and not retries
