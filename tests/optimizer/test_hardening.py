"""Bad input from a clumsy user or an attacker: one clear InvalidRequest, nothing written, on every backend.

Each case here was found by an adversarial review (issue 13) doing something else:
a traceback, a backend-specific error, a half-written trial or a silent wrong write.
"""

from __future__ import annotations

import pytest

from studyhall import Float, Int, InvalidRequest, Orchestrator
from studyhall.optimizer.study._summary import summarize

OBJ = "tests.optimizer.optimize_objectives"


@pytest.fixture
def orch(storage_url: str) -> Orchestrator:
    return Orchestrator(storage_url)


def running(study) -> list[int]:  # type: ignore[no-untyped-def]
    return [t.number for t in study.trials(states=["running"])]


def test_a_handle_from_another_study_is_refused(orch, study_name):
    a, b = orch.create_study(study_name + "-a"), orch.create_study(study_name + "-b")
    ha, hb = a.ask({"x": Float(0, 1)}), b.ask({"x": Float(0, 1)})
    assert ha.number == hb.number == 0
    with pytest.raises(InvalidRequest, match="asked from study"):
        b.tell(ha, 1.0)
    assert running(b) == [0] and running(a) == [0]  # neither trial was touched
    b.tell(hb, 1.0)
    a.tell(ha, 2.0)
    assert b.best_value == 1.0 and a.best_value == 2.0


def test_a_handle_from_another_database_is_refused(storage_url, tmp_path, study_name):
    elsewhere = Orchestrator(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    warmup = elsewhere.create_study("warm-up")
    for _ in range(50):  # trial ids there run ahead of any this test's database gives
        warmup.tell(warmup.ask({"x": Float(0, 1)}), 0.0)
    h = elsewhere.create_study(study_name).ask({"x": Float(0, 1)})  # same study name, same number 0
    here = Orchestrator(storage_url).create_study(study_name)
    mine = here.ask({"x": Float(0, 1)})
    assert (h.number, h.study) == (mine.number, mine.study) and h.trial_id != mine.trial_id
    with pytest.raises(InvalidRequest, match="not trial"):
        here.tell(h, 1.0)
    assert running(here) == [0]


@pytest.mark.parametrize(
    "kind,name",
    [
        ("study", "bad\x00name"),
        ("study", "x" * 10_000),
        ("study", "lone\udc80surrogate"),
        ("param", "a\x00b"),
        ("param", "p" * 600),
        ("param", "lone\udc80surrogate"),
    ],
)
def test_names_every_backend_can_store(orch, study_name, kind, name):
    if kind == "study":
        with pytest.raises(InvalidRequest):
            orch.create_study(name)
        assert name not in orch.study_names()
    else:
        study = orch.create_study(study_name)
        with pytest.raises(InvalidRequest, match="parameter name"):
            study.ask({name: Float(0, 1)})
        assert study.trials() == []  # nothing written: no orphan RUNNING trial


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"a\x00": 1}, "NUL"),
        ({"k" * 600: 1}, "at most 512"),
        ({"blob": "x" * 70_000}, "65,535"),
        ({"o": object()}, "JSON-serializable"),
        (5, "must be a dict"),
    ],
)
def test_attributes_every_backend_can_store(orch, study_name, attrs, match):
    study = orch.create_study(study_name)
    t = study.ask({"x": Float(0, 1)})
    with pytest.raises(InvalidRequest, match=match):
        study.tell(t, 1.0, user_attrs=attrs)
    assert running(study) == [0]  # nothing written: the trial can still be told
    study.tell(t, 1.0, user_attrs={"ok": "x" * 60_000})
    assert study.trial(0).user_attrs["ok"] == "x" * 60_000


def test_an_oversized_attribute_fails_its_trial_and_the_run_goes_on(orch, study_name):
    study = orch.create_study(study_name, direction="maximize", sampler="random", seed=0)
    report = study.optimize(f"{OBJ}:oversized_attr", n_trials=4, workers=1, progress=False)
    assert report.completed == 3 and report.failed == 1
    failed = study.trials(states=["fail"])
    assert [t.number for t in failed] == [1] and "65,535" in failed[0].user_attrs["error"]


def test_extreme_scores_summarise_to_finite_numbers_on_every_backend(orch, study_name):
    study = orch.create_study(study_name)
    t = study.ask({"x": Float(0, 1)})
    study.tell(t, scores=[1e308, 1e308, -1e308])
    s = study.trial_metrics(0)["score"]
    assert s.min == -1e308 and s.max == 1e308 and s.p50 == 1e308
    assert [b[:2] for b in s.histogram] == [(-1e308, 0.0), (0.0, 1e308)]
    assert all(map(lambda v: abs(v) < float("inf"), [s.mean, s.std, *(x for b in s.histogram for x in b[:2])]))


def test_quantiles_and_bins_do_not_overflow_at_the_float_limit():
    s = summarize([-1.7e308, 1.7e308])
    assert s.p50 == 0.0 and s.histogram[0][0] == -1.7e308 and s.histogram[-1][1] == 1.7e308
    assert all(abs(x) < float("inf") for b in s.histogram for x in b[:2])


@pytest.mark.parametrize("seed", ["abc", -1, 2**70, 1.5, True])
def test_bad_seeds(orch, study_name, seed):
    with pytest.raises(InvalidRequest, match="seed"):
        orch.create_study(study_name, seed=seed)
    assert study_name not in orch.study_names()


@pytest.mark.parametrize(
    "make", [lambda: Float(-1e308, 1e308), lambda: Int(-(2**70), 2**70)], ids=["float-too-wide", "int-beyond-2**53"]
)
def test_search_spaces_a_sampler_cannot_draw_from(make):
    with pytest.raises(InvalidRequest):
        make()


def test_retries_must_be_a_count(orch, study_name):
    with pytest.raises(InvalidRequest, match="retries"):
        orch.create_study(study_name, retries=True)
    study = orch.create_study(study_name)
    with pytest.raises(InvalidRequest, match="retries"):
        study.retries = True  # type: ignore[assignment]


def test_a_huge_integer_value_is_a_float(orch, study_name):
    study = orch.create_study(study_name)
    study.tell(study.ask({"x": Float(0, 1)}), 10**20)
    assert study.best_value == 1e20
