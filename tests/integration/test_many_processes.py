"""Several processes on one database: no lock error, no lost or duplicated trial."""

from __future__ import annotations

import subprocess

import pytest

from studyhall.optimizer import Orchestrator
from tests._util import python

WORKER = """
import sys
from studyhall.optimizer import Orchestrator, Float, Int
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = Orchestrator(url).load_study(name)
space = {"x": Float(-5, 5), "k": Int(1, 8)}
for _ in range(n):
    t = study.ask(space)
    study.tell(t, scores=[t.params["x"] ** 2, float(t.params["k"])])
print("done", n)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_processes_ask_and_tell_100_trials_each(request, backend, study_name):
    url = request.getfixturevalue(f"{backend}_url")
    Orchestrator(url).create_study(study_name, sampler="random")
    procs = [
        python(WORKER, url, study_name, "100", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=110) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "locked" not in err.lower()
        assert out.strip() == "done 100"
    study = Orchestrator(url).load_study(study_name)
    trials = study.trials()
    assert sorted(t.number for t in trials) == list(range(400))
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert all(t.user_attrs["score.n"] == 2 for t in trials)
