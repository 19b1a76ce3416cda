"""The create-study / ask / tell API, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import concurrent.futures
import math
import threading

import optuna
import pytest
import sqlalchemy as sa

from studyhall.optimizer import Categorical, Float, Int, Orchestrator, StudyInfo, Summary, TrialHandle
from studyhall.storage import DuplicateStudy, InvalidRequest, StudyNotFound

SPACE = {"instruction": Categorical(range(8)), "temperature": Float(0.0, 1.0), "k": Int(1, 8)}


@pytest.fixture
def orch(store):
    return Orchestrator(store)


def test_ask_tell_roundtrip(orch, study_name):
    study = orch.create_study(study_name, direction="maximize", sampler="tpe", seed=0)
    t = study.ask(SPACE)
    assert isinstance(t, TrialHandle) and t.number == 0
    assert set(t.params) == set(SPACE)
    assert 1 <= t.params["k"] <= 8 and 0.0 <= t.params["temperature"] <= 1.0
    frozen = study.tell(t, 0.81)
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.value == 0.81
    assert study.best_value == 0.81 and study.best_params == t.params
    assert study.best_trial.number == 0


def test_scores_store_a_distribution(orch, study_name):
    study = orch.create_study(study_name, direction="maximize")
    t = study.ask(SPACE)
    frozen = study.tell(t, scores=[1, 0, 1, 1])
    assert frozen.value == 0.75
    attrs = frozen.user_attrs
    assert attrs["score.n"] == 4 and attrs["score.mean"] == 0.75
    assert attrs["score.min"] == 0 and attrs["score.max"] == 1 and attrs["score.p50"] == 1
    assert math.isclose(attrs["score.std"], 0.4330127, rel_tol=1e-6)
    assert {"score.p90", "score.p99"} <= set(attrs)
    m = study.trial_metrics(t.number)
    s = m["score"]
    assert isinstance(s, Summary) and s.n == 4 and s.mean == 0.75
    assert sum(c for _, _, c in s.histogram) == 4 and len(s.histogram) <= 20


def test_metrics_are_summarised_under_their_names(orch, study_name):
    study = orch.create_study(study_name)
    t = study.ask(SPACE)
    lat = [0.1 * i for i in range(1, 101)]
    study.tell(t, 1.0, metrics={"llm.latency_s": lat})
    s = study.trial_metrics(t.number)["llm.latency_s"]
    assert s.n == 100 and math.isclose(s.p90, 9.01, rel_tol=1e-9) and s.max == pytest.approx(10.0)
    assert len(s.histogram) == 20
    assert study.trial(t.number).user_attrs["llm.latency_s.p99"] == pytest.approx(s.p99)


def test_multi_objective_values(orch, study_name):
    study = orch.create_study(study_name, directions=["maximize", "minimize"], sampler="nsga2", seed=1)
    for v in ([0.5, 3.0], [0.9, 1.0]):
        study.tell(study.ask(SPACE), values=v)
    assert [t.values for t in study.best_trials] == [[0.9, 1.0]]
    with pytest.raises(InvalidRequest, match="2 objective"):
        study.tell(study.ask(SPACE), 0.3)


def test_fail_and_pruned_states(orch, study_name):
    study = orch.create_study(study_name)
    t1, t2 = study.ask_batch(SPACE, k=2)
    study.tell(t1, state="fail", error="the provider was down")
    study.tell(t2, state="pruned")
    trials = {t.number: t for t in study.trials()}
    assert trials[t1.number].state.name == "FAIL"
    assert trials[t1.number].user_attrs["error"] == "the provider was down"
    assert trials[t2.number].state.name == "PRUNED"
    assert [t.number for t in study.trials(states=["fail"])] == [t1.number]


def test_ask_batch_spreads_pending_trials(orch, study_name):
    study = orch.create_study(study_name, sampler="tpe", seed=0)
    space = {"x": Float(-10, 10)}
    for _ in range(12):  # past TPE's startup trials, so constant liar matters
        t = study.ask(space)
        study.tell(t, (t.params["x"] - 3) ** 2)
    batch = study.ask_batch(space, k=4)
    xs = sorted(t.params["x"] for t in batch)
    assert len({t.number for t in batch}) == 4
    assert min(b - a for a, b in zip(xs, xs[1:])) > 1e-6  # no two pending trials on the same point


def test_enqueue_is_handed_out_first(orch, study_name):
    study = orch.create_study(study_name)
    study.ask(SPACE)  # teaches the study its space
    study.enqueue({"instruction": 3, "temperature": 0.2, "k": 4})
    t = study.ask(SPACE)
    assert t.params == {"instruction": 3, "temperature": 0.2, "k": 4}


def test_an_ask_is_one_transaction_when_nothing_is_queued(orch, study_name):
    # The queue is looked at inside the trial's own transaction, not in one before it.
    # (A random sampler reads no trials; the heartbeat thread's beats are not the ask's.)
    study = orch.create_study(study_name, sampler="random")
    study.ask(SPACE)  # teaches the study its space (a write of its own)
    begun = []
    me = threading.get_ident()
    listener = lambda conn: begun.append(conn) if threading.get_ident() == me else None  # noqa: E731
    sa.event.listen(orch.storage.engine, "begin", listener)
    try:
        study.ask(SPACE)
    finally:
        sa.event.remove(orch.storage.engine, "begin", listener)
    assert len(begun) == 1


def test_threads_asking_at_once_claim_a_queued_trial_once(orch, study_name):
    study = orch.create_study(study_name)
    study.ask(SPACE)
    queued = {"instruction": 5, "temperature": 0.5, "k": 5}
    study.enqueue(queued)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        asked = list(pool.map(lambda _: orch.load_study(study_name).ask(SPACE), range(4)))
    assert sum(t.params == queued for t in asked) == 1
    assert len({t.number for t in asked}) == 4
    assert [t.state.name for t in study.trials()].count("WAITING") == 0


@pytest.mark.parametrize(
    "sampler", ["tpe", "random", "cmaes", "nsga2", optuna.samplers.GridSampler({"x": [0.0, 0.5, 1.0], "y": [0.0, 1.0]})]
)
def test_samplers_by_name_or_object(orch, study_name, sampler):
    study = orch.create_study(study_name, sampler=sampler, seed=0)
    for _ in range(3):
        t = study.ask({"x": Float(0, 1), "y": Float(0, 1)})
        study.tell(t, t.params["x"] + t.params["y"])
    assert len(study.trials(states=["complete"])) == 3


def test_seeded_random_sampler_is_reproducible(orch, study_name):
    a = orch.create_study(study_name + "a", sampler="random", seed=7)
    b = orch.create_study(study_name + "b", sampler="random", seed=7)
    assert a.ask(SPACE).params == b.ask(SPACE).params


def test_list_load_delete(orch, study_name):
    study = orch.create_study(study_name, direction="maximize")
    study.tell(study.ask(SPACE), 0.4)
    study.tell(study.ask(SPACE), 0.7)
    study.ask(SPACE)  # still running
    infos = {i.name: i for i in orch.list_studies()}
    assert infos[study_name] == StudyInfo(study_name, ["maximize"], 3, 0.7)
    again = orch.load_study(study_name)
    assert again.best_value == 0.7 and again.directions == ["maximize"]
    assert orch.create_study(study_name, direction="maximize", load_if_exists=True).best_value == 0.7
    orch.delete_study(study_name)
    assert study_name not in orch.study_names()
    with pytest.raises(StudyNotFound):
        orch.load_study(study_name)


def test_load_names_the_known_studies(orch, study_name):
    orch.create_study(study_name)
    with pytest.raises(StudyNotFound) as err:
        orch.load_study(study_name + "-typo")
    assert study_name in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, InvalidRequest)


def test_duplicate_study(orch, study_name):
    orch.create_study(study_name)
    with pytest.raises(DuplicateStudy, match="load_if_exists"):
        orch.create_study(study_name)


def test_optuna_reads_a_studyhall_database(orch, study_name, store):
    study = orch.create_study(study_name, direction="maximize")
    study.tell(study.ask(SPACE), scores=[0.0, 1.0])
    plain = optuna.storages.RDBStorage(store.url)  # Optuna alone, knowing nothing of studyhall
    try:
        loaded = optuna.load_study(study_name=study_name, storage=plain)
        assert loaded.best_value == 0.5
        assert loaded.best_trial.user_attrs["score.n"] == 2
    finally:
        plain.engine.dispose()


def test_huge_scores_summarise_without_overflow(orch, study_name):
    study = orch.create_study(study_name)
    t = study.ask(SPACE)
    frozen = study.tell(t, scores=[1e300, -1e300, 5e299])
    s = study.trial_metrics(t.number)["score"]
    assert math.isfinite(s.std) and s.std == pytest.approx(8.4983658e299, rel=1e-6)
    assert frozen.value == pytest.approx(1.6666667e299, rel=1e-6)


class _HookSampler(optuna.samplers.RandomSampler):
    """Records what tell hands the sampler's after_trial hook, and can act inside it."""

    def __init__(self, during=None):
        super().__init__(seed=0)
        self.calls = []
        self.during = during

    def after_trial(self, study, trial, state, values):
        self.calls.append((trial.number, trial.state, state, values))
        if self.during is not None:
            self.during(trial)


def test_tell_runs_the_samplers_after_trial_hook_as_optuna_does(orch, study_name, store):
    sampler = _HookSampler()
    study = orch.create_study(study_name, sampler=sampler)
    t1, t2, t3 = study.ask_batch(SPACE, k=3)
    study.tell(t1, 0.3)
    study.tell(t2, state="fail")
    store.optuna.set_trial_intermediate_value(t3.trial_id, 4, 0.125)
    pruned = study.tell(t3, state="pruned")
    running = optuna.trial.TrialState.RUNNING
    assert sampler.calls == [
        (t1.number, running, optuna.trial.TrialState.COMPLETE, [0.3]),
        (t2.number, running, optuna.trial.TrialState.FAIL, None),
        (t3.number, running, optuna.trial.TrialState.PRUNED, [0.125]),  # the last reported value
    ]
    assert pruned.value == 0.125 and study.trial(t3.number).value == 0.125


def test_of_two_tells_racing_only_the_first_writes(orch, study_name, store):
    # Another teller finishes the trial while this one is between its read and its write.
    other = Orchestrator(store)  # another Study object: what a second thread or host would hold
    sampler = _HookSampler(during=lambda trial: other.load_study(study_name).tell(trial.number, 0.9))
    study = orch.create_study(study_name, sampler=sampler)
    t = study.ask(SPACE)
    with pytest.raises(InvalidRequest, match="finished meanwhile"):
        study.tell(t, scores=[0.0, 0.0], user_attrs={"who": "loser"})
    final = study.trial(t.number)
    assert final.value == 0.9 and final.state.name == "COMPLETE"
    assert "who" not in final.user_attrs and "score.n" not in final.user_attrs
    assert study.trial_metrics(t.number) == {}


def test_tell_overwrites_user_attrs_set_while_running(orch, study_name, store):
    study = orch.create_study(study_name)
    t = study.ask(SPACE)
    store.optuna.set_trial_user_attr(t.trial_id, "stage", "running")
    store.optuna.set_trial_user_attr(t.trial_id, "kept", 1)
    frozen = study.tell(t, 0.5, user_attrs={"stage": "done"})
    assert frozen.user_attrs["stage"] == "done" and frozen.user_attrs["kept"] == 1
    assert study.trial(t.number).user_attrs == {"stage": "done", "kept": 1}
