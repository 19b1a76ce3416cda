"""The proposer, bootstrapping and MiproLoop.auto: bounded calls, de-duplicated, resumable."""

from __future__ import annotations

from mipro_helpers import TASK, SimLM

from studyhall.optimizer import MiproLoop, bootstrap_demos, propose_instructions
from studyhall.optimizer.mipro._auto import budget
from studyhall.optimizer.mipro._simmodel import PHRASINGS, SimModel
from studyhall.optimizer.mipro._simtask import exact_match, solve


def test_proposals_are_grounded_distinct_and_bounded() -> None:
    lm = SimLM(responder=SimModel(0))
    out = propose_instructions(
        lm, TASK.trainset, n=6, program_description="solve(question) -> number", basic_instruction=PHRASINGS[0]
    )
    assert 1 <= len(out) <= 6 and len({o.casefold() for o in out}) == len(out)
    assert PHRASINGS[0] not in out and all(o in PHRASINGS for o in out)
    assert lm.calls <= 6 + 1 + 1  # one per candidate, the summary, a spare for duplicates
    few = SimLM(responder=SimModel(0))
    assert len(propose_instructions(few, TASK.trainset, n=6, max_calls=3)) <= 2 and few.calls == 3


def test_bootstrapped_demos_are_right_answers_within_the_budget() -> None:
    lm = SimLM()
    sets = bootstrap_demos(solve, exact_match, TASK.trainset, lm=lm, instruction=TASK.instructions[4], sets=3, k=2)
    assert sets[0] == [] and 2 <= len(sets) <= 4 and all(len(s) == 2 for s in sets[1:])
    assert lm.calls <= 3 * (2 + 3)
    for s in sets[1:]:
        for d in s:
            assert exact_match(d, solve(d, TASK.instructions[4], [], SimLM())) == 1.0
    stingy = SimLM()
    bootstrap_demos(solve, exact_match, TASK.trainset, lm=stingy, instruction="x", sets=4, k=4, max_calls=5)
    assert stingy.calls <= 5 + 7  # the budget stops new windows; one in flight may finish


def test_auto_proposes_bootstraps_and_resumes_without_new_calls(sqlite_url: str, study_name: str) -> None:
    lm = SimLM(responder=SimModel(0))
    loop = MiproLoop.auto(
        "light",
        solve,
        exact_match,
        trainset=TASK.trainset,
        valset=TASK.valset,
        lm=lm,
        instruction=TASK.instructions[0],
        study=study_name,
        storage=sqlite_url,
        workers=0,
    )
    b = budget("light", len(TASK.valset))
    assert loop.budget == b and loop.n_trials == b.n_trials == 10 and loop.minibatch_size == 15 and loop.prune
    assert loop.candidates.instructions[0][0] == TASK.instructions[0] and len(loop.candidates.instructions[0]) > 4
    made = lm.calls
    result = loop.run(n_trials=4)
    assert result.setup_calls == made and result.trials == 5
    again = MiproLoop.auto(
        "light",
        solve,
        exact_match,
        trainset=TASK.trainset,
        valset=TASK.valset,
        lm=lm,
        instruction=TASK.instructions[0],
        study=study_name,
        storage=sqlite_url,
        workers=0,
    )
    assert again.candidates.fingerprint() == loop.candidates.fingerprint()
    before = lm.calls
    assert again.run(n_trials=4).trials == 5 and lm.calls == before  # resumed: nothing proposed or run again
