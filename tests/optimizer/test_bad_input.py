"""Every bad input is a clear InvalidRequest, and writes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studyhall.optimizer import Categorical, Float, Int, Orchestrator
from studyhall.storage import InvalidRequest, StudyhallError, TrialNotFound

SPACE = {"x": Float(0.0, 1.0), "c": Categorical(["a", "b"])}


@pytest.fixture
def orch(store):
    return Orchestrator(store)


def _snapshot(study):
    return [(t.number, t.state, t.values, dict(t.user_attrs)) for t in study.trials()]


@pytest.mark.parametrize("name", ["", "   ", "x" * 513, None, 3])
def test_bad_study_names(orch, name):
    with pytest.raises(InvalidRequest, match="study name"):
        orch.create_study(name)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "bogus"}, "unknown sampler"),
        ({"direction": "up"}, "neither"),
        ({"direction": "maximize", "directions": ["maximize"]}, "not both"),
        ({"directions": []}, "at least one"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_study_options_create_nothing(orch, study_name, kwargs, match):
    with pytest.raises(InvalidRequest, match=match):
        orch.create_study(study_name, **kwargs)
    assert study_name not in orch.study_names()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_non_finite_values_are_refused_and_leave_the_trial_running(orch, study_name, value):
    study = orch.create_study(study_name)
    t = study.ask(SPACE)
    with pytest.raises(InvalidRequest, match="not finite"):
        study.tell(t, value)
    with pytest.raises(InvalidRequest, match="non-finite"):
        study.tell(t, scores=[1.0, value])
    # 0/1 samples skip the finiteness pass: NaN and inf are neither 0 nor 1, so they are still caught
    for samples in ([value], [0.0, value, 1.0], np.array([1.0] * 9 + [value])):
        with pytest.raises(InvalidRequest, match="scores contain a non-finite"):
            study.tell(t, scores=samples)
        with pytest.raises(InvalidRequest, match="metric 'm' contain a non-finite"):
            study.tell(t, 0.5, metrics={"m": samples})
    assert study.trial(t.number).state.name == "RUNNING"
    assert study.trial(t.number).user_attrs == {}
    study.tell(t, 0.5)  # still tellable


def test_wrong_number_of_values(orch, study_name):
    study = orch.create_study(study_name, directions=["maximize", "minimize"])
    t = study.ask(SPACE)
    for bad in (0.1, [0.1], [0.1, 0.2, 0.3]):
        with pytest.raises(InvalidRequest, match="2 objective"):
            study.tell(t, bad)
    with pytest.raises(InvalidRequest, match="single-objective"):
        study.tell(t, scores=[1, 0])
    assert study.trial(t.number).state.name == "RUNNING"


def test_unknown_and_finished_trials(orch, study_name):
    study = orch.create_study(study_name)
    with pytest.raises(TrialNotFound, match="no trial number 42"):
        study.tell(42, 1.0)
    t = study.ask(SPACE)
    study.tell(t, 1.0)
    before = _snapshot(study)
    with pytest.raises(InvalidRequest, match="already finished"):
        study.tell(t, 2.0, scores=[2.0])
    assert _snapshot(study) == before
    with pytest.raises(InvalidRequest):
        study.tell("seven", 1.0)  # type: ignore[arg-type]


def test_tell_arguments(orch, study_name):
    study = orch.create_study(study_name)
    t = study.ask(SPACE)
    cases = [
        ({}, "needs a value"),
        ({"value": 1.0, "values": [1.0]}, "not both"),
        ({"state": "exploded"}, "unknown trial state"),
        ({"state": "running"}, "unknown trial state"),
        ({"state": "fail", "value": 1.0}, "takes no value"),
        ({"scores": []}, "empty"),
        ({"value": "high"}, "numbers"),
        ({"value": 1.0, "metrics": {"": [1.0]}}, "metric names"),
        ({"value": 1.0, "metrics": {"lat": ["slow"]}}, "numbers"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InvalidRequest, match=match):
            study.tell(t, **kwargs)
    assert study.trial(t.number).state.name == "RUNNING"
    assert study.trial_metrics(t.number) == {}


def test_params_outside_the_space(orch, study_name):
    study = orch.create_study(study_name)
    study.ask(SPACE)
    for params, match in [
        ({"x": 2.0, "c": "a"}, "outside"),
        ({"x": 0.5, "c": "z"}, "outside"),
        ({"x": 0.5, "nope": 1}, "not in the space"),
    ]:
        with pytest.raises(InvalidRequest, match=match):
            study.enqueue(params)
    assert len(study.trials(states=["waiting"])) == 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Float(1, 0), "low must be <= high"),
        (lambda: Float(0, math.inf), "finite"),
        (lambda: Float(0, 1, log=True), "low > 0"),
        (lambda: Float(0.1, 1, log=True, step=0.1), "not both"),
        (lambda: Int(5, 1), "low must be <= high"),
        (lambda: Int(0, 1.5), "integers"),
        (lambda: Int(1, 10, step=0), "step"),
        (lambda: Float(0, 1, step=0.3), "multiple of step; use high=0.9"),
        (lambda: Int(0, 10, step=3), "multiple of step; use high=9"),
        (lambda: Categorical([]), "at least one"),
        (lambda: Categorical("abc"), "not the string"),
        (lambda: Categorical([object()]), "choices must be"),
    ],
)
def test_bad_space_types(make, match):
    with pytest.raises(InvalidRequest, match=match) as err:
        make()
    assert isinstance(err.value, StudyhallError) and isinstance(err.value, ValueError)


def test_bad_space_objects(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name)
    with pytest.raises(InvalidRequest, match="use Float"):
        study.ask({"x": (0, 1)})
    with pytest.raises(InvalidRequest, match="dict"):
        study.ask([Float(0, 1)])
    with pytest.raises(InvalidRequest, match="k >= 1"):
        study.ask_batch(SPACE, k=0)
    assert study.trials() == []
