"""study.compare: a paired t-test where the examples match, Welch's where they do not (checked against scipy)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage import InvalidRequest, TrialNotFound
from tests._util import ROOT

SPACE = {"x": Float(0, 1)}


def _tell(study, scores, **attrs):  # type: ignore[no-untyped-def]
    t = study.ask(SPACE)
    study.tell(t, scores=scores, user_attrs=attrs or None)
    return t.number


def test_paired_comparison_matches_scipy_ttest_rel(storage_url, study_name):
    study = Orchestrator(storage_url).create_study(study_name, direction="maximize")
    rng = np.random.default_rng(0)
    a = (rng.random(30) < 0.9).astype(float)
    b = np.where(rng.random(30) < 0.8, a, 1 - a)
    ta, tb = _tell(study, a), _tell(study, b)
    c = study.compare(ta, tb)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert c.paired and c.test == "paired t-test" and c.n == 30 and "by position" in c.note
    assert c.diff == pytest.approx(a.mean() - b.mean())
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_example_ids_pair_examples_scored_in_another_order(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.1, 40), rng.normal(0.5, 0.1, 40)
    order = rng.permutation(40)
    ta = _tell(study, a, **{"score.example_ids": [f"q{i}" for i in range(40)]})
    tb = _tell(study, b[order], **{"score.example_ids": [f"q{i}" for i in order]})
    c = study.compare(ta, tb)
    ref = stats.ttest_rel(a, b)
    assert c.paired and "example id" in c.note
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)


@pytest.mark.parametrize("same_n", [False, True])
def test_different_examples_fall_back_to_welch_and_say_so(sqlite_url, study_name, same_n):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    rng = np.random.default_rng(2)
    a = (rng.random(30) < 0.9).astype(float)
    b = (rng.random(30 if same_n else 25) < 0.7).astype(float)
    if same_n:  # the same n, but other examples (MiproLoop's minibatches record their valset positions)
        ta = _tell(study, a, **{"mipro.examples": list(range(30))})
        tb = _tell(study, b, **{"mipro.examples": list(range(10, 40))})
    else:
        ta, tb = _tell(study, a), _tell(study, b)
    c = study.compare(ta, tb)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert not c.paired and c.test == "Welch's t-test" and "the examples differ" in c.note
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
    if same_n:
        assert "20 of them both" in c.note


def test_degenerate_and_bad_comparisons(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    same = _tell(study, [1, 0, 1])
    twin = _tell(study, [1, 0, 1])
    c = study.compare(same, twin)
    assert (c.diff, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0) and not c.significant
    shifted = _tell(study, [2, 1, 2])
    c = study.compare(shifted, same)
    assert (c.diff, c.ci_low, c.ci_high, c.p_value) == (1.0, 1.0, 1.0, 0.0) and c.significant
    plain = study.ask(SPACE)
    study.tell(plain, 0.5)
    with pytest.raises(InvalidRequest, match="no per-example 'score' samples"):
        study.compare(same, plain.number)
    with pytest.raises(TrialNotFound):
        study.compare(same, 99)
    with pytest.raises(InvalidRequest, match="'full:N' or 'selected'"):
        study.compare(same, "best")
    with pytest.raises(TrialNotFound, match="no full evaluations"):
        study.compare(same, "full:0")


@pytest.mark.slow
def test_compare_command(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    ta = _tell(study, [1.0] * 27 + [0.0] * 3)
    tb = _tell(study, [1.0] * 25 + [0.0] * 5)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "studyhall", "compare", study_name, *args, "--storage", sqlite_url]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)

    out = run(str(ta), str(tb))
    assert out.returncode == 0, out.stderr
    assert f"trial {ta} - trial {tb}: score 0.9 - 0.8333 = +0.06667" in out.stdout
    assert "not distinguishable at 95%" in out.stdout and "paired by position" in out.stdout
    doc = json.loads(run(str(ta), str(tb), "--json").stdout)
    assert doc["paired"] is True and doc["n"] == 30 and doc["significant"] is False


def test_select_and_read_back_on_every_backend(storage_url, study_name):
    from studyhall.optimizer.telemetry._selection import SELECTION_ATTR
    from studyhall.storage._study_attrs import study_user_attr_by_name

    study = Orchestrator(storage_url).create_study(study_name, direction="maximize")
    t = _tell(study, [1, 0, 1, 1])
    sel = study.select({"x": 0.5}, scores=[1.0] * 27 + [0.0] * 3, trial=t, source="a check")
    assert study.selection == sel and (round(sel.ci_low, 3), round(sel.ci_high, 3)) == (0.744, 0.965)
    assert study_user_attr_by_name(study.storage, SELECTION_ATTR)[study_name] == sel.as_dict()
    with pytest.raises(TrialNotFound):
        study.select({"x": 0.5}, scores=[1.0], trial=42)
