"""storage/_studies.py's whole-study reads on every backend."""

from __future__ import annotations

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage._studies import complete_values, running_and_waiting, state_counts


def test_counts_by_state_and_the_values_of_complete_trials(store, study_name):
    study = Orchestrator(store).create_study(study_name, direction="maximize")
    space = {"x": Float(0, 1)}
    for value in (0.25, 0.75):
        study.tell(study.ask(space), value)
    study.tell(study.ask(space), state="fail", error="boom")
    study.tell(study.ask(space), state="pruned")
    running = study.ask(space)
    left = study.ask(space)
    store.optuna.detach_trials([left.trial_id])  # its process exited: told some day, from anywhere
    study.enqueue({"x": 0.5})
    sid = study._study_id
    assert running_and_waiting(store, sid) == ([running.trial_id], 1)
    counts, best = state_counts(store, sid)
    assert counts == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1, "RUNNING": 2, "WAITING": 1} and best == 0.75
    assert complete_values(store, sid, 1) == (7, 2, [[0.25, 0.75]])
