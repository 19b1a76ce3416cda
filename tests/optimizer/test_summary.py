"""summarize() agrees with numpy's own percentile, std and histogram."""

from __future__ import annotations

import numpy as np
import pytest

from studyhall.optimizer import Summary, summarize
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
