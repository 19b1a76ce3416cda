"""Workflows: steps in order, one event per run and per step, nesting, failures naming the step."""

from __future__ import annotations

import pickle

import pytest

from studyhall.optimizer import Orchestrator, StudyhallError, Workflow, WorkflowError, WorkflowResult, events, trace
from studyhall.storage import InvalidRequest, connect


def retrieve(q: str) -> list[str]:
    trace.step("search", {"q": q})
    return [q, "doc about " + q]


def generate(docs: list[str]) -> str:
    return " | ".join(docs)


def flaky(text: str) -> str:
    trace.step("about to parse", {"len": len(text)})
    raise ValueError(f"cannot parse {len(text)} characters")


def show(nodes) -> list:  # type: ignore[no-untyped-def]
    return [(n.event.event_type, n.event.data["name"], show(n.children)) for n in nodes]


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request):
    return connect(str(request.getfixturevalue(f"{request.param}_url")))


def test_steps_feed_each_other_without_storage():
    wf = Workflow([("retrieve", retrieve), ("generate", generate), len], name="rag")
    result = wf.run("2+2")
    assert isinstance(result, WorkflowResult)
    assert result.output == len("2+2 | doc about 2+2")
    assert [s.name for s in result.steps] == ["retrieve", "generate", "len"]
    assert result.steps[1].input == ["2+2", "doc about 2+2"] and result.steps[2].output == result.output
    assert all(s.duration_s >= 0 and s.event_id is None for s in result.steps)
    assert wf("x") == len("x | doc about x")  # a workflow is a step of others


def test_nested_workflows_nest_their_events(st):
    inner = Workflow([("retrieve", retrieve), ("generate", generate)], name="inner")
    outer = Workflow([("clean", str.strip), ("answer", inner), ("measure", len)], name="outer")
    result = outer.run("  q  ", storage=st)
    assert result.output == len("q | doc about q")
    tree = events.trace_tree(st, result.correlation_id)
    assert show(tree) == [
        (
            "workflow.run",
            "outer",
            [
                ("workflow.step", "clean", []),
                (
                    "workflow.step",
                    "answer",
                    [
                        (
                            "workflow.run",
                            "inner",
                            [
                                ("workflow.step", "retrieve", [("trace.step", "search", [])]),
                                ("workflow.step", "generate", []),
                            ],
                        ),
                    ],
                ),
                ("workflow.step", "measure", []),
            ],
        ),
    ]
    run = tree[0].event.data
    assert run["data"] == {"input": "  q  "} and run["output"] == result.output and run["duration_s"] >= 0
    clean = tree[0].children[0].event.data
    assert clean["data"]["input"] == "  q  " and clean["output"] == "q" and clean["index"] == 0
    assert [s.event_id for s in result.steps] == [c.event.id for c in tree[0].children]


def test_a_failing_step_raises_workflow_error_with_the_trace(st):
    wf = Workflow([("retrieve", retrieve), ("generate", generate), ("parse", flaky)], name="rag")
    with pytest.raises(WorkflowError) as info:
        wf.run("q", storage=st, correlation_id="rag-run-1")
    err = info.value
    assert isinstance(err, StudyhallError) and err.step == "parse" and err.index == 2 and err.workflow == "rag"
    assert "'parse'" in str(err) and "ValueError: cannot parse" in str(err)
    assert isinstance(err.__cause__, ValueError)
    names = [s["name"] for s in err.trace]
    assert names == ["rag", "retrieve", "search", "generate", "parse", "about to parse", "parse"]
    assert err.trace[-1]["error"].startswith("ValueError") and err.correlation_id == "rag-run-1"
    (run,) = events.trace_tree(st, "rag-run-1")
    assert run.event.data["error"] == "step 'parse' failed"
    assert run.children[2].event.data["error"].startswith("ValueError: cannot parse")
    back = pickle.loads(pickle.dumps(err))
    assert back.step == "parse" and back.trace == err.trace and str(back) == str(err)


def test_a_failing_nested_workflow_names_both_steps():
    inner = Workflow([("parse", flaky)], name="inner")
    with pytest.raises(WorkflowError) as info:
        Workflow([("prep", str), ("sub", inner)], name="outer").run(123)
    assert info.value.step == "sub" and isinstance(info.value.__cause__, WorkflowError)
    assert info.value.__cause__.step == "parse"
    assert [s["name"] for s in info.value.trace][-3:] == ["about to parse", "parse", "sub"]


def test_bad_workflows_are_refused():
    for steps, msg in (([], "at least one"), ([("a", 3)], "not callable"), ([("", len)], "name"), ([42], "step 0")):
        with pytest.raises(InvalidRequest, match=msg):
            Workflow(steps)  # type: ignore[arg-type]


def test_a_workflow_as_an_objective(sqlite_url, study_name):
    wf = Workflow([("scores", lambda x: [1.0 if i < x * 10 else 0.0 for i in range(10)])], name="scorer")
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    objective = wf.as_objective(make_input=lambda trial: trial.suggest_float("x", 0, 1))
    study.optimize(objective, n_trials=3, workers=0, progress=False)
    best = study.best_trial
    assert best.user_attrs["score.n"] == 10 and best.value == pytest.approx(best.user_attrs["score.mean"])
    evs = events.query(study.storage, trial=best._trial_id, event_type="workflow.step")
    assert [e.data["name"] for e in evs] == ["scores"]
    fixed = Workflow([("id", lambda x: x)]).as_objective(0.25, score=lambda out: out * 2)
    assert fixed(None) == 0.5
