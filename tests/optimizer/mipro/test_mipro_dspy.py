"""The DSPy bridge end to end: DSPy's calls through LLMClient and a shared RateLimiter, against FakeProvider."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline
import dspy  # noqa: E402 - the dev extra installs it; studyhall itself does not need it

from studyhall.bridge import FakeProvider, LLMClient, RateLimiter  # noqa: E402
from studyhall.optimizer import Orchestrator, dspy_lm, optimize_dspy  # noqa: E402
from studyhall.optimizer.dspy import StudyhallMIPRO  # noqa: E402
from studyhall.optimizer.dspy._simtask import dspy_arith_task  # noqa: E402
from studyhall.optimizer.mipro._simmodel import PHRASINGS, SimModel  # noqa: E402


def test_dspy_lm_goes_through_the_client() -> None:
    with FakeProvider(responder=SimModel(0)) as fp:
        client = LLMClient("sim-small", base_url=fp.base_url, api_key="sim")
        task = dspy_arith_task(n_train=10, n_val=5)
        with dspy.context(lm=dspy_lm(client)):
            pred = task.program(question=task.valset[0].question)
        assert pred.answer.strip().lstrip("-").isdigit() and pred.reasoning
        assert fp.stats()["completed"] == 1


@pytest.mark.slow
def test_optimize_dspy_end_to_end(sqlite_url: str, study_name: str) -> None:
    task = dspy_arith_task(n_train=30, n_val=40, seed=0)
    with FakeProvider(responder=SimModel(0), rpm=None, tpm=None) as fp:
        limiter = RateLimiter(f"dspy-{study_name}", rpm=100_000, tpm=10_000_000, storage=sqlite_url)
        client = LLMClient("sim-small", base_url=fp.base_url, api_key="sim", limiter=limiter)
        compiled = optimize_dspy(
            task.program,
            task.metric,
            task.trainset,
            task.valset,
            lm=client,
            study=study_name,
            storage=sqlite_url,
            n_trials=5,
        )
        served = fp.stats()["completed"]
    r = compiled.studyhall_result
    assert isinstance(compiled, dspy.Module) and compiled is not task.program
    pred = compiled.predictors()[0]
    assert pred.signature.instructions == r.best_instructions[0]
    assert pred.signature.instructions in (*PHRASINGS, task.program.predictors()[0].signature.instructions)
    assert all(isinstance(d, dspy.Example) for d in pred.demos) and len(pred.demos) == len(r.best_demos[0])
    assert all(d.get("reasoning") for d in pred.demos)  # bootstrapped from its own traces, as DSPy's
    assert served == r.setup_calls + r.llm_calls  # every call is counted
    assert r.trials == 6 and compiled.score == r.best_full_score
    trials = Orchestrator(sqlite_url).load_study(study_name).trials()
    for t in trials:  # DSPy's calls were recorded as the trials' telemetry
        assert t.user_attrs["llm.calls"] == t.user_attrs["mipro.llm_calls"] > 0 and "llm.latency_s.p50" in t.user_attrs


def test_teleprompter_compiles_like_miprov2(sqlite_url: str, study_name: str) -> None:
    task = dspy_arith_task(n_train=20, n_val=20, seed=1)
    with FakeProvider(responder=SimModel(1)) as fp:
        client = LLMClient("sim-small", base_url=fp.base_url, api_key="sim")
        tp = StudyhallMIPRO(task.metric, lm=client, study=study_name, storage=sqlite_url, n_trials=3)
        compiled = tp.compile(task.program, trainset=task.trainset, valset=task.valset)
    assert compiled.studyhall_result.trials == 4
