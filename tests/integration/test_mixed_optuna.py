"""A plain-Optuna process and a studyhall process on one study at once: every trial accounted for.

studyhall's storage writes Optuna's own tables, so Optuna's ``RDBStorage`` (an
optuna-dashboard, the optuna CLI, a colleague's script) shares the database with it.
"""

from __future__ import annotations

import subprocess

import optuna
import pytest

from studyhall import Float, Int, Orchestrator
from tests._util import python

N_EACH = 40
PLAIN_OPTUNA = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1], sampler=optuna.samplers.RandomSampler())
def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    k = trial.suggest_int("k", 1, 8)
    trial.set_user_attr("who", "optuna")
    return x * k
study.optimize(objective, n_trials=int(sys.argv[3]))
"""


@pytest.mark.slow
def test_plain_optuna_and_studyhall_share_one_study(storage_url: str, study_name: str) -> None:
    study = Orchestrator(storage_url).create_study(study_name, direction="minimize", sampler="random")
    space = {"x": Float(0.0, 1.0), "k": Int(1, 8)}
    other = python(PLAIN_OPTUNA, storage_url, study_name, str(N_EACH), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(N_EACH):
        t = study.ask(space)
        study.tell(t, t.params["x"] * t.params["k"], user_attrs={"who": "studyhall"})
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err.decode()[-2000:]

    trials = study.trials()
    assert len(trials) == 2 * N_EACH
    assert sorted(t.number for t in trials) == list(range(2 * N_EACH))  # unique numbers, no gap
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert sum(t.user_attrs["who"] == "optuna" for t in trials) == N_EACH
    assert all(set(t.params) == {"x", "k"} and t.value == t.params["x"] * t.params["k"] for t in trials)
    # ... and Optuna's own storage reads exactly what studyhall reads.
    rdb = optuna.storages.RDBStorage(storage_url)
    try:
        plain = optuna.load_study(study_name=study_name, storage=rdb)
        assert [(t.number, t.params, t.value) for t in plain.trials] == [(t.number, t.params, t.value) for t in trials]
    finally:
        rdb.engine.dispose()
