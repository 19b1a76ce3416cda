"""summarize() agrees with numpy's own percentile, std and histogram."""

from __future__ import annotations

import numpy as np
import pytest

from studyhall.optimizer import Summary, summarize
from studyhall.optimizer.study._summary import _binary_summary, _sorted_summary
from studyhall.storage import InvalidRequest


@pytest.mark.parametrize(
    "samples",
    [
        np.random.default_rng(0).random(1000),
        np.random.default_rng(1).integers(0, 2, 35).astype(float),
        np.random.default_rng(2).normal(size=7),
        np.array([1, 1, 2, 2, 2, 5.0]),
        np.array([3.0]),
        np.random.default_rng(3).random(100) * 1e6,
        np.zeros(4),
        np.ones(1000),
        np.random.default_rng(4).integers(0, 2, 1000).astype(float),
    ],
)
def test_matches_numpy(samples):
    s = summarize(samples)
    assert s.n == samples.size
    assert s.mean == pytest.approx(samples.mean()) and s.std == pytest.approx(samples.std())
    assert [s.p50, s.p90, s.p99] == pytest.approx(list(np.percentile(samples, (50, 90, 99))))
    lo, hi = samples.min(), samples.max()
    counts, edges = np.histogram(samples, bins=len(s.histogram), range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
    assert [c for _, _, c in s.histogram] == list(counts)
    assert [b[0] for b in s.histogram] == pytest.approx(list(edges[:-1]))
    assert len(s.histogram) <= min(20, len(np.unique(samples)))
    assert Summary.from_dict(s.as_dict()) == s


def test_empty_and_non_finite_samples_are_refused():
    with pytest.raises(InvalidRequest, match="empty"):
        summarize([])
    with pytest.raises(InvalidRequest, match="non-finite"):
        summarize([1.0, float("nan")])


# ---- the mean's 95% interval ----------------------------------------------------------------


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval's closed form, written out independently of summarize()."""
    z = 1.959963984540054
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (27, 30, (0.744, 0.965)),  # the trial 14: 27 of 30
        (25, 30, (0.664, 0.927)),  # ... and trial 22: not distinguishable from it
        (0, 10, (0.0, 0.278)),
        (10, 10, (0.722, 1.0)),
        (1, 1, (0.207, 1.0)),  # one sample: wide, not degenerate
    ],
)
def test_wilson_interval_of_0_1_scores(k, n, expected):
    s = summarize([1.0] * k + [0.0] * (n - k))
    assert s.ci_method == "wilson"
    assert (round(s.ci_low, 3), round(s.ci_high, 3)) == expected
    assert (s.ci_low, s.ci_high) == pytest.approx(_wilson(k, n))
    assert s.sem == pytest.approx(np.std([1.0] * k + [0.0] * (n - k), ddof=1) / np.sqrt(n) if n > 1 else 0.0)


def test_t_interval_of_continuous_scores_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for seed, n in [(0, 2), (1, 5), (2, 30), (3, 31), (4, 200), (5, 5000)]:
        x = np.random.default_rng(seed).normal(0.5, 0.2, n)
        s = summarize(x)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert s.ci_method == "t"
        assert s.sem == pytest.approx(stats.sem(x), rel=1e-12)
        assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi), rel=1e-7)


def test_t_quantile_beyond_the_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from studyhall.optimizer.study._summary import _t975

    for df in [*range(1, 80), 100, 1000, 10**6]:
        assert _t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-8)


def test_wilson_interval_covers_a_binomial_mean_about_95_percent_of_the_time():
    # 8,000 simulated trials of 30 pass/fail examples, each at a true pass rate drawn from 5%-95%:
    # Wilson's coverage oscillates with p (0.92-0.98 at n=30) around 95% on average.
    rng = np.random.default_rng(0)
    ps = rng.uniform(0.05, 0.95, 8000)
    ks = rng.binomial(30, ps)
    hits = np.array(
        [s.ci_low <= p <= s.ci_high for p, s in zip(ps, (summarize(np.r_[np.ones(k), np.zeros(30 - k)]) for k in ks))]
    )
    assert 0.94 <= hits.mean() <= 0.96, hits.mean()
    # and at one p, the simulated coverage is the exact binomial one (within 4 standard errors)
    stats = pytest.importorskip("scipy.stats")
    p, m = 0.3, 4000
    ks = rng.binomial(30, p, m)
    sims = np.mean([(lambda s: s.ci_low <= p <= s.ci_high)(summarize(np.r_[np.ones(k), np.zeros(30 - k)])) for k in ks])
    exact = sum(stats.binom.pmf(k, 30, p) for k in range(31) if _wilson(k, 30)[0] <= p <= _wilson(k, 30)[1])
    assert abs(sims - exact) <= 4 * np.sqrt(exact * (1 - exact) / m)


def test_t_interval_covers_a_normal_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    samples = rng.normal(2.0, 1.5, (4000, 12))
    covered = sum(s.ci_low <= 2.0 <= s.ci_high for s in map(summarize, samples))
    assert 0.94 <= covered / len(samples) <= 0.96


@pytest.mark.parametrize(
    "samples",
    [[0.7], [0.25, 0.25, 0.25], [1.0] * 5, [1e308, 1e308, -1e308], [1.7e308, -1.7e308], [5e307] * 3 + [1.7e308]],
)
def test_degenerate_or_huge_samples_give_a_finite_interval(samples):
    s = summarize(samples)
    assert all(np.isfinite([s.mean, s.std, s.sem, s.ci_low, s.ci_high]))
    assert s.ci_low <= s.mean <= s.ci_high
    if len(set(samples)) == 1 and samples[0] not in (0.0, 1.0):
        assert s.sem == 0 and s.ci_low == s.ci_high == s.mean


def test_a_summary_without_its_interval_derives_it():
    # storage rows (and summaries built before the interval existed) carry only the eight statistics
    for samples in ([1, 0, 1, 1, 1, 0], [0.0, 0.0], [1.0], [0.2, 0.4, 0.9, 0.9]):
        s = summarize(samples)
        old = {k: v for k, v in s.as_dict().items() if k not in ("sem", "ci_low", "ci_high", "ci_method")}
        assert Summary.from_dict(old) == s


def test_a_0_5_score_is_not_pass_fail():
    assert summarize([0.0, 0.5, 1.0]).ci_method == "t"
    assert summarize([0.0, 1.0], bins=1).ci_method == "wilson"
    assert summarize([0.0, 0.5, 1.0], bins=1).ci_method == "t"


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 100, 101, 1000, 4321])
@pytest.mark.parametrize("bins", [1, 2, 20])
def test_pass_fail_scores_summarised_from_two_counts_match_the_sorted_path(n, bins):
    for ones in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        x = np.r_[np.ones(ones), np.zeros(n - ones)]
        np.random.default_rng(n).shuffle(x)
        fast, general = _binary_summary(n, ones, bins).as_dict(), _sorted_summary(x, bins).as_dict()
        for key in ("std", "sem", "ci_low", "ci_high"):
            assert fast.pop(key) == pytest.approx(general.pop(key), rel=1e-12, abs=1e-15)
        assert fast == general
        assert summarize(x, bins=bins) == _binary_summary(n, ones, bins)  # what tell() takes
