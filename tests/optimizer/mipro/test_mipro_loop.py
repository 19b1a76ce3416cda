"""MiproLoop and the simulated task: candidates, minibatches, errors, pruning, budget, resume."""

from __future__ import annotations

import optuna
import pytest
from mipro_helpers import TASK, SimLM, make_loop

from studyhall.optimizer import InvalidRequest, MiproLoop, MiproResult, Orchestrator
from studyhall.optimizer.mipro._candidates import Candidates, labeled_demo_sets, minibatch_indices
from studyhall.optimizer.mipro._evaluate import evaluate_batch
from studyhall.optimizer.mipro._loop import FULL_EVAL_ATTR
from studyhall.optimizer.mipro._simtask import (
    INSTRUCTIONS,
    SimResponder,
    answer_probability,
    arith_task,
    build_messages,
    exact_match,
    load_problems,
    parse_answer,
    solve,
)

# ---- the simulated task ------------------------------------------------------------------


def test_shipped_problems_are_unique_and_answered() -> None:
    problems = load_problems()
    assert len(problems) == 160
    assert len({p["question"] for p in problems}) == 160
    for p in problems:
        assert p["difficulty"] in (1, 2, 3)
        assert p["reasoning"].rsplit("=", 1)[-1].strip() == p["answer"]


def test_responder_is_deterministic_and_rewards_better_prompts() -> None:
    ex = TASK.valset[0]
    msgs = build_messages(ex, INSTRUCTIONS[4], TASK.demos[4])
    assert SimResponder(0)(msgs, "m") == SimResponder(0)(msgs, "m")
    base = build_messages(ex, INSTRUCTIONS[0], [])
    hasty = build_messages(ex, INSTRUCTIONS[5], [])
    p = {
        k: answer_probability(m[0]["content"], m[1]["content"])
        for k, m in {"best": msgs, "base": base, "hasty": hasty}.items()
    }
    assert p["best"] > p["base"] > p["hasty"]
    assert answer_probability(INSTRUCTIONS[0], "Question: x", difficulty=3) < answer_probability(
        INSTRUCTIONS[0], "Question: x", difficulty=1
    )
    assert "only answer" in SimResponder(0)([{"role": "user", "content": "Question: what is love?"}], "m")


def test_parse_and_metric() -> None:
    assert parse_answer("Let's see.\n3 + 4 = 7.\nAnswer: 7") == "7"
    assert parse_answer("The answer is 12.") == "12"
    assert parse_answer("The answer is twelve.") == ""
    assert exact_match({"answer": "7"}, "7") == 1.0
    assert exact_match({"answer": "7"}, "") == 0.0


def test_simulated_landscape_has_a_clear_best() -> None:
    lm = SimLM()

    def acc(i: int, d: int) -> float:
        return sum(exact_match(ex, solve(ex, TASK.instructions[i], TASK.demos[d], lm)) for ex in TASK.valset) / len(
            TASK.valset
        )

    assert acc(4, 4) - acc(0, 0) > 0.4  # the search has something to find


# ---- candidates, minibatches, evaluation ---------------------------------------------------


def test_candidates_one_and_several_predictors() -> None:
    one = Candidates(["a", "b"], [[], [{"q": 1}]])
    assert one.single and set(one.space()) == {"0_instruction", "0_demos"}
    assert one.program_args({"0_instruction": 1, "0_demos": 1}) == ("b", [{"q": 1}])
    two = Candidates([["a", "b"], ["c"]], [[[], [1]], [[2]]])
    # predictor 1 has one demo set: no choice, so no parameter for it
    assert not two.single and set(two.space()) == {"0_instruction", "0_demos", "1_instruction"}
    assert two.program_args({"0_instruction": 1, "0_demos": 1, "1_instruction": 0, "1_demos": 0}) == (
        ["b", "c"],
        [[1], [2]],
    )
    no_demos = Candidates(["a"], None)
    assert set(no_demos.space()) == {"0_instruction"}


@pytest.mark.parametrize(
    ("instructions", "demos", "match"),
    [
        ("just one string", None, "list of instruction strings"),
        ([], None, "instructions"),
        ([["a"], ["b"]], [[[]]], "2 predictors need 2"),
        (["a"], "x", "demo sets"),
    ],
)
def test_bad_candidates_say_what_to_pass(instructions, demos, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match=match):
        Candidates(instructions, demos)


def test_minibatches_are_seeded_per_trial() -> None:
    a = minibatch_indices(0, 3, 100, 35)
    assert a == minibatch_indices(0, 3, 100, 35) and len(set(a)) == 35
    assert a != minibatch_indices(0, 4, 100, 35) and a != minibatch_indices(1, 3, 100, 35)
    assert sorted(minibatch_indices(0, 0, 10, 35)) == list(range(10))
    sets = labeled_demo_sets(TASK.trainset, n_sets=5, max_demos=3)
    assert sets[0] == [] and [len(s) for s in sets[1:]] == [1, 2, 3, 1]


def test_failed_calls_are_errors_not_zeros_and_concurrency_is_bounded() -> None:
    bad = {TASK.valset[i]["question"] for i in (0, 1)}
    lm = SimLM(fail_on=bad, delay=0.005)
    batch = evaluate_batch(
        solve, exact_match, lm, TASK.valset, range(20), TASK.instructions[4], TASK.demos[4], concurrency=4
    )
    assert set(batch.errors) == {0, 1} and "ProviderError" in batch.errors[0]
    assert len(batch.scores) == 18 and batch.calls == 18 and batch.tokens > 0
    assert lm.max_in_flight <= 4
    stopped = evaluate_batch(
        solve, exact_match, SimLM(fail_on=bad), TASK.valset, range(20), "x", [], concurrency=1, max_errors=1
    )
    assert len(stopped.errors) == 2 and stopped.skipped == 18  # nothing more is spent on a doomed trial


# ---- the loop ------------------------------------------------------------------------------


def test_loop_finds_a_good_prompt_and_keeps_full_evals_apart(sqlite_url: str, study_name: str) -> None:
    result = make_loop(sqlite_url, study_name).run(n_trials=20)
    assert isinstance(result, MiproResult) and result.stopped == "n_trials"
    study = Orchestrator(sqlite_url).load_study(study_name)
    trials = study.trials()
    assert len(trials) == 21  # full evaluations are not trials that TPE would mix in
    assert trials[0].params == {"0_instruction": 0, "0_demos": 0}  # the default program is the baseline
    for t in trials:
        assert t.state.name == "COMPLETE"
        assert len(t.user_attrs["mipro.scores"]) == 20 and "score.p90" in t.user_attrs
        assert t.value == pytest.approx(sum(t.user_attrs["mipro.scores"]) / 20)
    fulls = result.full_evals
    assert fulls and fulls[0].after_trials == 21 and fulls[0].reason == "first"  # after the search
    assert all(f.reason == "gain" for f in fulls[1:])
    assert len({tuple(sorted(f.params.items())) for f in fulls}) == len(fulls)  # never the same combination twice
    assert all(len(f.scores) == len(TASK.valset) for f in fulls)
    assert all(f.n == len(TASK.valset) for f in fulls if f.complete)
    keys = [k for k in study.optuna.user_attrs if k.startswith(FULL_EVAL_ATTR)]
    assert len(keys) == len(fulls)
    assert result.best_full_score == max(f.score for f in fulls if f.complete) >= 0.8
    assert result.best_instruction == TASK.instructions[result.best_params["0_instruction"]]
    assert result.best_demos == [TASK.demos[result.best_params["0_demos"]]]
    assert result.llm_calls == 21 * 20 + sum(f.llm_calls for f in fulls) and result.tokens > 0
    assert all(f.llm_calls == len(TASK.valset) - f.reused for f in fulls if f.complete)


def test_trials_with_too_many_failed_calls_fail_instead_of_scoring_low(sqlite_url: str, study_name: str) -> None:
    bad = {ex["question"] for ex in TASK.valset[:12]}  # 20% of the valset keeps failing
    result = make_loop(sqlite_url, study_name, lm=SimLM(fail_on=bad), max_errors=3).run(n_trials=10)
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert failed and result.failed == len(failed)
    for t in failed:
        assert t.user_attrs["mipro.errors"] > 3 and "TooManyErrors" in t.user_attrs["error"] and t.value is None
    for t in complete:  # tolerated errors are left out of the mean, not counted as 0
        assert t.user_attrs["mipro.errors"] <= 3
        assert len(t.user_attrs["mipro.scores"]) == 20 - t.user_attrs["mipro.errors"]
        assert t.value == pytest.approx(sum(t.user_attrs["mipro.scores"]) / len(t.user_attrs["mipro.scores"]))


def test_a_provider_that_always_fails_stops_the_loop(sqlite_url: str, study_name: str) -> None:
    everything = {ex["question"] for ex in TASK.valset}
    result = make_loop(sqlite_url, study_name, lm=SimLM(fail_on=everything)).run(n_trials=30)
    assert result.stopped == "failing" and result.trials == 6 and result.failed == 6
    assert result.best_full_score is None and result.full_evals == []


def test_wilcoxon_pruning_saves_calls_and_still_finds_the_best(sqlite_url: str, study_name: str) -> None:
    kw = dict(minibatch_size=35, concurrency=4)
    plain = make_loop(sqlite_url, study_name, **kw).run(n_trials=20)
    pruned = make_loop(sqlite_url, study_name + "-p", prune=True, **kw).run(n_trials=20)
    assert pruned.pruned > 0 and pruned.calls_saved > 0
    assert pruned.llm_calls < plain.llm_calls
    assert pruned.best_full_score is not None and pruned.best_full_score >= 0.8
    trials = Orchestrator(sqlite_url).load_study(study_name + "-p").trials(states=["pruned"])
    for t in trials:
        assert len(t.intermediate_values) < 35 and t.user_attrs["mipro.skipped"] > 0


def test_token_budget_stops_cleanly(sqlite_url: str, study_name: str) -> None:
    full = make_loop(sqlite_url, study_name).run(n_trials=10)
    budget = full.tokens * 3 // 4  # (full evaluations are fewer now: half would leave no room for one)
    result = make_loop(sqlite_url, study_name + "-b", max_tokens_total=budget).run(n_trials=10)
    assert result.stopped == "max_tokens_total"
    assert result.tokens <= budget and result.trials < 11
    assert result.full_evals and result.full_evals[0].complete  # the budget kept room for a full evaluation


def test_a_second_run_resumes_the_study(sqlite_url: str, study_name: str) -> None:
    first = make_loop(sqlite_url, study_name).run(n_trials=7)
    assert first.trials == 8 and first.full_evals and first.full_evals[0].after_trials == 8
    second = make_loop(sqlite_url, study_name).run(n_trials=12)
    assert second.trials == 13
    assert second.full_evals[: len(first.full_evals)] == first.full_evals  # nothing lost, nothing redone
    assert second.llm_calls == 13 * 20 + sum(f.llm_calls for f in second.full_evals)
    again = make_loop(sqlite_url, study_name).run(n_trials=12)  # already done: nothing to run
    assert again.trials == 13 and again.llm_calls == second.llm_calls
    with pytest.raises(InvalidRequest, match="other candidates"):
        make_loop(sqlite_url, study_name, instructions=TASK.instructions[:3]).run(n_trials=13)


def test_several_predictors(sqlite_url: str, study_name: str) -> None:
    seen = []

    def two_step(example, instruction, demos, lm):  # type: ignore[no-untyped-def]
        seen.append((instruction, demos))
        draft = solve(example, instruction[0], demos[0], lm)
        return draft if instruction[1] == "keep" else ""

    loop = MiproLoop(
        two_step,
        exact_match,
        instructions=[TASK.instructions, ["keep", "drop"]],
        demos=[TASK.demos, [[]]],
        valset=TASK.valset,
        lm=SimLM(),
        study=study_name,
        storage=sqlite_url,
        minibatch_size=10,
        workers=0,
    )
    result = loop.run(n_trials=10)
    assert isinstance(seen[0][0], list) and len(seen[0][0]) == 2
    assert result.best_params["1_instruction"] == 0 and len(result.best_instructions) == 2
    assert set(Orchestrator(sqlite_url).load_study(study_name).trials()[0].params) == {
        "0_instruction",
        "0_demos",
        "1_instruction",
    }


def test_bad_arguments() -> None:
    with pytest.raises(InvalidRequest, match="valset"):
        MiproLoop(solve, exact_match, instructions=["a"], valset=[], lm=SimLM())
    with pytest.raises(InvalidRequest, match="minibatch_size"):
        MiproLoop(solve, exact_match, instructions=["a"], valset=[1], lm=SimLM(), minibatch_size=0)
    with pytest.raises(InvalidRequest, match="n_trials"):
        MiproLoop(solve, exact_match, instructions=["a"], valset=[1], lm=SimLM()).run(n_trials=0)


def test_wilcoxon_pruner_construction_is_quiet() -> None:
    from studyhall.optimizer.mipro._evaluate import QuietWilcoxon

    assert isinstance(QuietWilcoxon(0.1)._inner, optuna.pruners.WilcoxonPruner)


@pytest.mark.slow
def test_parallel_trials_in_pool_workers_share_one_limiter(sqlite_url: str, study_name: str) -> None:
    from studyhall.bridge import FakeProvider, LLMClient, RateLimiter
    from studyhall.optimizer import services

    task = arith_task(n_train=40, n_val=30)
    with FakeProvider(rpm=3000, tpm=2_000_000, latency_s=(0.01, 0.03), responder=task.responder(), seed=0) as fp:
        limiter = RateLimiter(f"sim-{study_name}", rpm=3000, tpm=2_000_000, storage=sqlite_url)
        client = LLMClient("sim-small", base_url=fp.base_url, api_key="sim", limiter=limiter, timeout=30.0)
        with services.override("lm", client):  # the loop names the service; workers get it too
            loop = MiproLoop(
                solve,
                exact_match,
                instructions=task.instructions,
                demos=task.demos,
                valset=task.valset,
                lm="lm",
                study=study_name,
                storage=sqlite_url,
                minibatch_size=10,
                full_eval_every=3,
                workers=2,
                concurrency=2,
            )
            result = loop.run(n_trials=6)
        served = fp.stats()["completed"]
    assert result.completed == 7 and result.full_evals and result.full_evals[0].after_trials == 7
    assert result.llm_calls == served == 7 * 10 + sum(f.llm_calls for f in result.full_evals)
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    overlapping = sum(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert overlapping >= 1  # two trials ran at the same time
    for t in trials:  # the client's telemetry, recorded in the worker, landed on the trial
        assert t.user_attrs["llm.calls"] == 10 and "llm.latency_s.p90" in t.user_attrs
    assert result.latency is not None and result.latency.n == served


@pytest.mark.slow
def test_demo_command_fresh_then_resumed(sqlite_url: str) -> None:
    from typer.testing import CliRunner

    from studyhall.optimizer.cli import _register_commands, app

    _register_commands()
    small = ["--storage", sqlite_url, "--val", "10", "--minibatch", "5", "--workers", "0", "--seed", "1"]
    first = CliRunner().invoke(app, ["demo", "--trials", "3", *small])
    assert first.exit_code == 0, first.output
    assert "best instruction" in first.output and f"optuna-dashboard {sqlite_url}" in first.output
    assert "429s (retried)" in first.output and "latency p50" in first.output
    sel = Orchestrator(sqlite_url).load_study("demo").selection
    assert sel is not None and sel.line() in first.output  # the demo's answer is the study's recorded selection
    resumed = CliRunner().invoke(app, ["demo", "--trials", "5", "--resume", *small])
    assert resumed.exit_code == 0, resumed.output
    assert len(Orchestrator(sqlite_url).load_study("demo").trials()) == 6  # 5 search trials and the baseline
    fresh = CliRunner().invoke(app, ["demo", "--trials", "2", *small])
    assert fresh.exit_code == 0 and "starting a fresh study" in fresh.output
    assert len(Orchestrator(sqlite_url).load_study("demo").trials()) == 3
