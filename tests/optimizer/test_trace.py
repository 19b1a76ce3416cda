"""Traces: steps and spans nest by context; failed trials carry their last steps."""

from __future__ import annotations

import contextvars
import os
import signal
import threading

import numpy as np
import pytest

from studyhall.optimizer import Orchestrator, events, trace
from studyhall.storage import InvalidRequest, connect


def react_objective(trial) -> float:  # type: ignore[no-untyped-def]
    """Thought/Action/Observation for 12 rounds, then fails when x > 0.5."""
    x = trial.suggest_float("x", 0, 1)
    for i in range(12):
        trace.step("Thought", {"round": i, "x": x})
        with trace.span("Action", {"tool": "search"}):
            trace.step("Observation", {"hits": i, "text": "long " * 200})
    if trial.user_attrs.get("fail"):
        raise RuntimeError("the provider returned nonsense")
    return x


def dying_objective(trial) -> float:  # type: ignore[no-untyped-def]
    """Records three steps, then its worker is SIGKILLed mid-trial."""
    for name in ("Thought", "Action", "Observation"):
        trace.step(name, {"x": trial.suggest_float("x", 0, 1)})
    os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request):
    return connect(str(request.getfixturevalue(f"{request.param}_url")))


def test_steps_and_spans_nest_in_a_scope(st):
    with trace.scope(st) as s:
        first = trace.step("Thought", {"plan": "search"})
        with trace.span("Action", {"tool": "search"}) as action:
            inner = trace.step("Observation", {"hits": 2})
            with pytest.raises(KeyError), trace.span("Parse"):
                raise KeyError("no field")
    roots = events.trace_tree(st, s.correlation_id)
    assert [n.event.id for n in roots] == [first, action]
    act = roots[1]
    assert act.event.event_type == trace.SPAN and act.event.data["duration_s"] >= 0
    assert [c.event.id for c in act.children][0] == inner
    parse = act.children[1].event
    assert parse.data["name"] == "Parse" and parse.data["error"] == "KeyError: 'no field'"
    names = [x["name"] for x in s.steps]
    assert names == ["Thought", "Action", "Observation", "Parse", "Parse"] and s.steps[-1]["error"]


def test_an_exception_leaving_a_scope_carries_the_trace():
    with pytest.raises(ZeroDivisionError) as info, trace.scope():
        trace.step("divide", {"by": 0})
        _ = 1 / 0
    assert info.value.trace == [{"name": "divide", "data": {"by": 0}}]  # type: ignore[attr-defined]


def test_outside_any_scope_steps_stay_in_memory_per_context():
    def run() -> list[dict]:
        assert trace.step("alone", {"n": np.int64(3), "arr": np.arange(30)}) is None
        return trace.last_steps()

    steps = contextvars.Context().run(run)
    assert steps[-1]["data"]["n"] == 3 and steps[-1]["data"]["arr"][-1] == "... 10 more"
    with pytest.raises(InvalidRequest, match="step name"):
        trace.step("", {})


def test_summarize_value_keeps_traces_small():
    big = {
        "text": "x" * 5000,
        "list": list(range(50)),
        "obj": object(),
        "nan": float("nan"),
        "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}},
        "exc": ValueError("bad"),
    }
    out = trace.summarize_value(big)
    assert out["text"].endswith("(5000 chars)") and len(out["text"]) < 250
    assert len(out["list"]) == 21 and out["nan"] == "nan" and out["exc"] == "ValueError: bad"
    assert isinstance(out["obj"], str) and isinstance(out["deep"]["a"]["b"]["c"], str)


def test_threads_see_the_scope_through_copy_context(sqlite_url):
    st = connect(sqlite_url)
    with trace.scope(st) as s, trace.span("fan-out") as parent:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(trace.step, "in a thread", {}))
        t.start()
        t.join()
    (root,) = events.trace_tree(st, s.correlation_id)
    assert root.event.id == parent and root.children[0].event.data["name"] == "in a thread"


@pytest.mark.parametrize("workers", [0, 2])
def test_failed_trials_keep_their_last_20_steps(sqlite_url, study_name, workers):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    study.enqueue({"x": 0.9}, user_attrs={"fail": True})
    study.enqueue({"x": 0.2})
    report = study.optimize(react_objective, n_trials=2, workers=workers, progress=False)
    assert report.failed == 1 and report.completed == 1
    failed, ok = study.trial(0), study.trial(1)
    assert failed.user_attrs["error"] == "RuntimeError: the provider returned nonsense"
    steps = failed.user_attrs["trace"]
    assert len(steps) == events.TRIAL_STEPS
    assert [s["name"] for s in steps[-3:]] == ["Thought", "Action", "Observation"]
    assert steps[-3]["data"] == {"round": 11, "x": 0.9} and len(steps[-1]["data"]["text"]) < 250
    assert "trace" not in ok.user_attrs
    # every step is also an event of its trial, nested under its span
    evs = events.query(study.storage, trial=failed._trial_id)
    assert len(evs) == 36 and {e.trial_id for e in evs} == {failed._trial_id}
    spans = {e.id for e in evs if e.event_type == trace.SPAN}
    obs = [e for e in evs if e.data["name"] == "Observation"]
    assert len(spans) == 12 and all(e.parent_id in spans for e in obs)
    assert all(e.data.get("duration_s") is not None for e in evs if e.id in spans)
    assert len(events.query(study.storage, trial=ok._trial_id)) == 36


@pytest.mark.slow
def test_a_crashed_trial_keeps_the_steps_sent_before_the_kill(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name)
    report = study.optimize(dying_objective, n_trials=1, workers=1, progress=False)
    assert report.crashed == 1
    frozen = study.trial(0)
    assert frozen.user_attrs["failure"] == "crash" and "signal" in frozen.user_attrs["error"]
    assert [s["name"] for s in frozen.user_attrs["trace"]] == ["Thought", "Action", "Observation"]
    assert len(events.query(study.storage, trial=frozen._trial_id, event_type=trace.STEP)) == 3
