"""storage/_studies.py's whole-study reads on every backend."""

from __future__ import annotations

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage._studies import complete_values, finished_and_running, state_counts


def test_counts_by_state_and_the_values_of_complete_trials(store, study_name):
    study = Orchestrator(store).create_study(study_name, direction="maximize")
    space = {"x": Float(0, 1)}
    for value in (0.25, 0.75):
        study.tell(study.ask(space), value)
    study.tell(study.ask(space), state="fail", error="boom")
    study.tell(study.ask(space), state="pruned")
    running = study.ask(space)
    sid = study._study_id
    assert finished_and_running(store, sid) == (4, [running.trial_id])
    counts, best = state_counts(store, sid)
    assert counts == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1, "RUNNING": 1} and best == 0.75
    assert complete_values(store, sid, 1) == (5, 2, [[0.25, 0.75]])
