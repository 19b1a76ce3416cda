"""`studyhall worker`: parallel trial scripts on one database, Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from studyhall.optimizer import Orchestrator
from tests._util import ROOT, wait_until

OBJ = "tests.optimizer.optimize_objectives"
CLI = "from studyhall.optimizer.cli import main; main()"


def start(*args: str, sleep: float = 0.02) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STUDYHALL_TEST_SLEEP": str(sleep)}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_workers_share_one_postgresql_study(postgresql_url, study_name):
    args = (
        study_name,
        "--objective",
        f"{OBJ}:sleepy",
        "--total",
        "60",
        "--workers",
        "2",
        "--storage",
        postgresql_url,
        "--create",
        "--direction",
        "maximize",
        "--sampler",
        "random",
        "--json",
    )
    orch = Orchestrator(postgresql_url)  # the schema exists before three processes race to use it
    procs = [start(*args) for _ in range(3)]
    try:
        outputs = [p.communicate(timeout=100) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out) for out, _ in outputs]
    study = orch.load_study(study_name)
    trials = study.trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # none duplicated
    assert not study.trials(states=["running", "waiting"])  # none lost
    finished = [t for t in trials if t.state.is_finished()]
    # The total is checked under the study's lock as each trial is created: exact, with three racing processes.
    assert len(finished) == 60
    assert sum(r["n_trials"] for r in reports) == len(finished)
    assert all(r["completed"] == r["n_trials"] for r in reports)


def test_ctrl_c_exits_130_and_leaves_nothing_running(sqlite_url, study_name):
    Orchestrator(sqlite_url).create_study(study_name)
    p = start(
        study_name,
        "--objective",
        f"{OBJ}:sleepy",
        "--trials",
        "4",
        "--workers",
        "2",
        "--storage",
        sqlite_url,
        "--json",
        sleep=60,
    )
    study = Orchestrator(sqlite_url).load_study(study_name)
    # two trials began (they suggested x); a third waits in the pool's queue
    wait_until(
        lambda: len([t for t in study.trials(states=["running"]) if t.params]) == 2,
        timeout=60,
        what="two running trials",
    )
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    trials = study.trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"]
    assert {t.user_attrs["error"] for t in trials[:2]} == {"interrupted"} and not trials[2].params


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no-such-study", "--objective", f"{OBJ}:sleepy", "--trials", "1"], "no study named"),
        (["s", "--create", "--objective", "nocolon", "--trials", "1"], "package.module:function"),
        (["s", "--create", "--objective", f"{OBJ}:sleepy"], "would never stop"),
    ],
)
def test_bad_input_exits_2_with_one_line(sqlite_url, args, needle):
    p = start(*args, "--storage", sqlite_url)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err[-3000:]
    assert needle in " ".join(err.split()) and "Traceback" not in err
