"""Regression tests for the defects of issue 14 (each failed before its fix)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from mipro_helpers import TASK, SimLM, make_loop

from studyhall.optimizer import Orchestrator
from studyhall.optimizer.mipro._candidates import Candidates, minibatch_indices
from studyhall.optimizer.mipro._evaluate import evaluate_batch
from studyhall.optimizer.mipro._simtask import exact_match, solve


class AlwaysPrune:
    """A trial whose pruner always says prune; it records when it was asked."""

    def __init__(self) -> None:
        self.reports: dict[int, float] = {}
        self.asked_at: list[int] = []

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def should_prune(self) -> bool:
        self.asked_at.append(len(self.reports))
        return True


# ---- 1. pruning after the last example; a pruned trial's value -------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_pruner_is_not_asked_once_every_example_has_started(concurrency: int) -> None:
    trial = AlwaysPrune()
    idx = list(range(15))  # the pruner's first turn (15 scores) is the last example
    batch = evaluate_batch(
        solve, exact_match, SimLM(), TASK.valset, idx, TASK.instructions[0], [], concurrency=concurrency, trial=trial
    )
    assert trial.asked_at == [] and not batch.pruned and len(batch.scores) == 15
    trial = AlwaysPrune()
    batch = evaluate_batch(
        solve, exact_match, SimLM(), TASK.valset, list(range(30)), TASK.instructions[0], [], concurrency=1, trial=trial
    )
    assert trial.asked_at == [15] and batch.pruned and batch.skipped == 15  # asked while 15 were still to start


def test_a_pruned_trial_is_worth_its_mean_so_far(sqlite_url: str, study_name: str) -> None:
    make_loop(sqlite_url, study_name, prune=True, minibatch_size=35, concurrency=4).run(n_trials=20)
    pruned = Orchestrator(sqlite_url).load_study(study_name).trials(states=["pruned"])
    assert pruned
    for t in pruned:
        scores = t.user_attrs["mipro.scores"]
        assert t.value == pytest.approx(sum(scores) / len(scores))  # not the last example's 0 or 1


# ---- 2. the paired test pairs the same examples ----------------------------------------------


def test_scores_are_reported_at_the_example_index_and_trials_share_examples(sqlite_url: str, study_name: str) -> None:
    make_loop(sqlite_url, study_name, prune=True, minibatch_size=20, concurrency=1).run(n_trials=6)
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    for t in trials:
        steps = {s for s in t.intermediate_values if s < len(TASK.valset)}
        assert steps == set(t.user_attrs["mipro.examples"])
        for step in steps:
            i = t.user_attrs["mipro.examples"].index(step)
            assert t.intermediate_values[step] == t.user_attrs["mipro.scores"][i]
    a, b = (set(minibatch_indices(0, n, 100, 35)) for n in (1, 2))
    assert len(a & b) >= 15  # enough in common for the paired test to run


# ---- 3. full evaluations only where they can change the answer -------------------------------


def _coin(*parts: Any) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 16**8


ACCURACY = {"i0": 0.3, "i1": 0.35, "i2": 0.25, "i3": 0.95, "i4": 0.3, "i5": 0.4}


def one_good_instruction(example: dict, instruction: str, demos: list, lm: Any) -> str:
    lm.chat([{"role": "user", "content": "x"}])
    right = _coin(instruction, example["question"]) < ACCURACY[instruction]
    return str(example["answer"]) if right else "wrong"


class CountingLM:
    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages: Any, **kw: Any) -> Any:
        from studyhall.bridge import Completion

        self.calls += 1
        return Completion("", "m", 1, 1, 0.0, 1)


def test_full_evaluations_go_only_to_combinations_that_could_win(sqlite_url: str, study_name: str) -> None:
    from studyhall.optimizer import MiproLoop

    loop = MiproLoop(
        one_good_instruction,
        exact_match,
        instructions=list(ACCURACY),
        valset=TASK.valset,
        lm=CountingLM(),
        study=study_name,
        storage=sqlite_url,
        minibatch_size=20,
        full_eval_every=5,
        workers=0,
    )
    result = loop.run(n_trials=20)
    assert result.best_instruction == "i3"
    # before: a full evaluation every 5 trials, each of the best-mean combination not yet
    # evaluated, however far below the incumbent (4 here, 3 of them hopeless)
    assert len(result.full_evals) <= 2
    first, *later = result.full_evals
    for f in later:
        assert f.reason == "gain" and f.minibatch_mean is not None and f.minibatch_mean > first.score - 0.2
    assert all(f.reused > 0 for f in result.full_evals)  # the examples its trials scored are not paid twice


# ---- 4. n_trials counts search trials; TPE's start-up fits the budget ------------------------


def test_n_trials_counts_search_trials_and_tpe_starts_up_within_the_budget(sqlite_url: str, study_name: str) -> None:
    loop = make_loop(sqlite_url, study_name)
    result = loop.run(n_trials=6)
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    assert len(trials) == 7 and result.trials == 7  # 6 search trials and the default program's
    assert trials[0].params == {"0_instruction": 0, "0_demos": 0}
    sampler = loop.open_study(10).optuna.sampler
    assert sampler._multivariate and sampler._n_startup_trials == 3  # not 10: 10 trials would all be random


# ---- 5. callbacks, duplicate candidates, concurrency -----------------------------------------


def test_callbacks_after_each_trial_and_each_full_evaluation(sqlite_url: str, study_name: str) -> None:
    events: list[Any] = []
    result = make_loop(sqlite_url, study_name, callbacks=[events.append]).run(n_trials=5)
    trials = [e for e in events if e.kind == "trial"]
    fulls = [e for e in events if e.kind == "full_eval"]
    assert [e.trial.number for e in trials] == list(range(6))
    assert [e.full_eval for e in fulls] == result.full_evals and fulls[-1].best is not None

    def stop_after_first(event: Any) -> None:
        if event.kind == "trial" and event.trial.number == 5:
            loop.stop()

    loop = make_loop(sqlite_url, study_name + "-s", callbacks=[stop_after_first])
    stopped = loop.run(n_trials=20)
    assert stopped.stopped == "callback" and stopped.trials == 6


def test_duplicate_candidates_are_dropped_with_a_warning() -> None:
    with pytest.warns(UserWarning) as caught:
        c = Candidates(
            ["Answer.", "Think step by step.", "answer. ", "Think  step by step."], [[], [{"q": 1}], [{"q": 1}]]
        )
    messages = [str(w.message) for w in caught]
    assert "instruction candidates of predictor 0: dropped 2 duplicate(s) (indices [2, 3])" in messages[0]
    assert "demo sets of predictor 0: dropped 1 duplicate(s) (indices [2])" in messages[1]
    assert c.instructions == [["Answer.", "Think step by step."]] and len(c.demos[0]) == 2


def test_calls_in_flight_are_bounded_by_workers_times_concurrency(sqlite_url: str, study_name: str) -> None:
    lm = SimLM(delay=0.002)
    loop = make_loop(sqlite_url, study_name, lm=lm, concurrency=3)
    assert loop.max_in_flight == 3 and make_loop(sqlite_url, "x", workers=2).max_in_flight == 16
    loop.run(n_trials=5)
    assert 1 < lm.max_in_flight <= 3
