"""Study-wide distributions, Prometheus metrics from tell(), and optuna-dashboard notes."""

from __future__ import annotations

import numpy as np
import optuna
import optuna_dashboard
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from studyhall.optimizer import Float, Orchestrator, Summary, events, summarize, telemetry, trace
from studyhall.storage import connect

SPACE = {"x": Float(0, 1)}


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's /metrics text, keyed by (name, sorted labels)."""
    text = generate_latest(telemetry.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_tell_feeds_the_prometheus_registry(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    before = scrape()
    scores = [[1, 0, 1, 1], [0.25, 0.5, 0.75]]
    for s in scores:
        study.tell(
            study.ask(SPACE),
            scores=s,
            metrics={"llm.latency_s": [0.2, 3.0], "llm.attempts": [1, 3]},
            user_attrs={"llm.calls": 2, "llm.rate_limited": 2},
        )
    study.tell(study.ask(SPACE), state="fail", error="worker died", user_attrs={"failure": "crash"})
    study.tell(study.ask(SPACE), state="fail", error="too slow", user_attrs={"failure": "timeout"})
    study.tell(study.ask(SPACE), state="fail", error="ValueError: x")
    study.tell(study.ask(SPACE), state="pruned")
    m = scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(m, name, study=study_name, **labels) - sample(before, name, study=study_name, **labels)

    assert delta("studyhall_trials_total", state="complete") == 2
    assert delta("studyhall_trials_total", state="fail") == 3 and delta("studyhall_trials_total", state="pruned") == 1
    assert delta("studyhall_trial_failures_total", reason="crash") == 1
    assert delta("studyhall_trial_failures_total", reason="error") == 1
    assert delta("studyhall_pool_crashes_total") == 1 and delta("studyhall_trial_timeouts_total") == 1
    assert delta("studyhall_llm_calls_total") == 4 and delta("studyhall_llm_rate_limited_total") == 4
    assert delta("studyhall_llm_retries_total") == 4  # two calls of three attempts
    flat = np.concatenate([np.asarray(s, float) for s in scores])
    assert delta("studyhall_example_score_count") == flat.size
    assert delta("studyhall_example_score_sum") == pytest.approx(flat.sum())
    assert delta("studyhall_example_score_bucket", le="0.0") == 1  # the single 0
    assert delta("studyhall_example_score_bucket", le="0.5") == 3  # 0, 0.25, 0.5 (le is inclusive)
    assert delta("studyhall_llm_latency_seconds_count") == 4
    assert delta("studyhall_llm_latency_seconds_bucket", le="0.25") == 2
    assert delta("studyhall_llm_latency_seconds_bucket", le="+Inf") == 4
    assert delta("studyhall_trial_value_count") == 2
    telemetry.count_crash(study_name)
    telemetry.count_timeout(study_name, 2)
    telemetry.count_llm(study_name, calls=5)
    again = scrape()
    assert (
        sample(again, "studyhall_pool_crashes_total", study=study_name)
        == sample(m, "studyhall_pool_crashes_total", study=study_name) + 1
    )
    assert (
        sample(again, "studyhall_trial_timeouts_total", study=study_name)
        == sample(m, "studyhall_trial_timeouts_total", study=study_name) + 2
    )
    assert (
        sample(again, "studyhall_llm_calls_total", study=study_name)
        == sample(m, "studyhall_llm_calls_total", study=study_name) + 5
    )
    assert telemetry.Summary is Summary and telemetry.summarize is summarize


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request):
    return connect(str(request.getfixturevalue(f"{request.param}_url")))


def test_study_metrics_pool_every_trial_exactly(st, study_name):
    study = Orchestrator(st).create_study(study_name, direction="minimize")
    rng = np.random.default_rng(0)
    per_trial, latencies = [], []
    for i in range(5):
        s, lat = rng.random(50 + i), rng.lognormal(-1, 0.5, 7)
        per_trial.append(s)
        latencies.append(lat)
        study.tell(study.ask(SPACE), scores=s, metrics={"llm.latency_s": lat})
    study.tell(study.ask(SPACE), state="fail", error="x", metrics={"llm.latency_s": [9.0]})
    m = study.metrics()
    assert (m.n_trials, m.n_complete, m.name) == (6, 5, "score")
    assert m.value == summarize([s.mean() for s in per_trial])
    assert m.pooled == summarize(np.concatenate(per_trial))  # exact, not merged histograms
    assert m.latency == summarize(np.concatenate([*latencies, [9.0]]))  # failed trials' calls count too
    assert m.latency.p99 > m.latency.p90 > m.latency.p50
    assert sorted(m.per_trial) == [0, 1, 2, 3, 4] and m.per_trial[3] == summarize(per_trial[3])
    d = m.as_dict()
    assert d["score"]["n"] == sum(len(s) for s in per_trial) and d["llm.latency_s"]["n"] == 36
    lat = study.metrics("llm.latency_s")
    assert lat.pooled == m.latency and lat.per_trial[5].n == 1


def test_metrics_of_an_empty_or_multi_objective_study(sqlite_url, study_name):
    orch = Orchestrator(sqlite_url)
    empty = orch.create_study(study_name).metrics()
    assert (empty.n_trials, empty.value, empty.pooled, empty.latency) == (0, None, None, None)
    multi = orch.create_study(study_name + "-mo", directions=["maximize", "minimize"])
    multi.tell(multi.ask(SPACE), values=[1.0, 5.0])
    multi.tell(multi.ask(SPACE), values=[3.0, 7.0])
    m = multi.metrics()
    assert [s.mean for s in m.values] == [2.0, 6.0]


def test_each_trial_with_telemetry_gets_a_dashboard_note(storage_url, study_name):
    study = Orchestrator(storage_url).create_study(study_name, direction="maximize")
    t = study.ask(SPACE)
    study.tell(t, scores=[1, 0, 1, 1], metrics={"llm.latency_s": [0.5, 1.5]}, user_attrs={"llm.tokens": 321})
    note = optuna_dashboard.get_note(optuna.Trial(study.optuna, t.trial_id))
    assert "| score | 4 | 0.75 |" in note and "| llm.latency_s | 2 | 1 |" in note and "llm.tokens: 321" in note

    # a note written while the trial ran is kept, the table appended below it
    t2 = study.ask(SPACE)
    live = optuna.Trial(study.optuna, t2.trial_id)
    optuna_dashboard.save_note(live, "tried the **long** prompt " + "x" * 3000)
    study.tell(t2, scores=list(np.linspace(0, 1, 11)))
    note2 = optuna_dashboard.get_note(live)
    assert note2.startswith("tried the **long** prompt") and "| score | 11 |" in note2
    attrs = study.optuna._storage.get_study_system_attrs(study._study_id)
    assert attrs[f"dashboard:{t2.trial_id}:note_ver"] == 2  # the dashboard's editor expects +1

    t3 = study.ask(SPACE)
    study.tell(t3, 0.5)  # no distributions: no note, nothing extra written
    assert f"dashboard:{t3.trial_id}:note_ver" not in study.optuna._storage.get_study_system_attrs(study._study_id)


def test_a_failed_trial_told_by_hand_gets_its_trace(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name)
    t = study.ask(SPACE)
    with trace.scope(study.storage, trial=t):
        for i in range(25):
            trace.step("Thought", {"i": i})
    frozen = study.tell(t, state="fail", error="gave up")
    assert [s["data"]["i"] for s in frozen.user_attrs["trace"]] == list(range(5, 25))
    assert len(events.query(study.storage, trial=t)) == 25
    assert events.trial_steps(t.trial_id) == []  # told: the buffer is gone


def test_each_summary_carries_its_interval_to_attrs_note_and_metrics(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    t = study.ask(SPACE)
    study.tell(t, scores=[1.0] * 27 + [0.0] * 3, metrics={"llm.latency_s": [0.5, 1.5, 1.0]})
    attrs = study.trial(t.number).user_attrs
    assert (round(attrs["score.ci_low"], 3), round(attrs["score.ci_high"], 3)) == (0.744, 0.965)
    assert attrs["score.sem"] == pytest.approx(np.std([1.0] * 27 + [0.0] * 3, ddof=1) / np.sqrt(30))
    assert attrs["llm.latency_s.ci_low"] == pytest.approx(1.0 - 4.302652729 * 0.5 / np.sqrt(3))
    note = optuna_dashboard.get_note(optuna.Trial(study.optuna, t.trial_id))
    assert "[0.744, 0.965] (Wilson)" in note and "(t)" in note
    stored = study.trial_metrics(t.number)["score"]  # rebuilt from the storage row
    pooled = study.metrics().per_trial[t.number]
    assert (stored.ci_low, stored.ci_high, stored.ci_method) == (pooled.ci_low, pooled.ci_high, "wilson")
    assert stored.ci_low == attrs["score.ci_low"]


@pytest.mark.parametrize(
    "samples",
    [[0.0], [1.0], [0.0] * 1000, [1.0] * 7, [1, 0, 1, 1], list(np.random.default_rng(0).random(200_001) < 0.3)],
    ids=["a 0", "a 1", "1000 zeros", "7 ones", "3 of 4", "200,001"],
)
def test_pass_fail_scores_reach_prometheus_from_their_two_counts(samples, monkeypatch):
    # The same buckets and sum as observing every sample, without another pass over them.
    from studyhall.optimizer.telemetry import _registry

    arr = np.asarray(samples, dtype=np.float64)
    every, counted = (_registry._BulkHistogram("h", "h", _registry.SCORE_BUCKETS) for _ in range(2))
    every.observe(arr, "s")
    monkeypatch.setattr(counted, "observe", lambda *a: pytest.fail("observed sample by sample"))
    _registry._observe(counted, arr, summarize(arr).as_dict(), "s")
    assert list(counted.collect())[0].samples == list(every.collect())[0].samples
