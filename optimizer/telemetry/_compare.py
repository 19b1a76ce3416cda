"""Is A really better than B? ``study.compare(a, b)``: the mean difference, its 95% interval and a p-value.

::

    a, b: a trial number, "full:N" (MiproLoop's Nth full evaluation) or "selected"
      ──> per-example scores in the order told, with example ids where stored
          (``mipro.examples``; ``<metric>.example_ids`` user_attr; a full evaluation's valset positions)
      ──> the same examples on both sides: paired t-test on the per-example differences
          (the same examples without ids: paired by position, and said so)
      ──> different examples (another n, other ids): Welch's unpaired t-test, and said so

Pairing matters: two prompts scored on the same 30 questions differ less between
each other than either does across questions, so the paired interval is the
narrower, honest one. The t distribution's quantiles and tails come from scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from studyhall.storage import InvalidRequest, TrialNotFound

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study

FULL_PREFIX = "full:"
SELECTED = "selected"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label, per-example scores (in order) and example ids (None: unknown)."""

    label: str
    scores: np.ndarray
    ids: list[Any] | None


@dataclass(frozen=True)
class Comparison:
    """A minus B on one metric: ``diff`` (mean of A - mean of B), its 95% interval and the test's p-value.

    ``paired`` says whether both scored the same examples (a paired t-test on the
    per-example differences, ``n`` pairs) or not (Welch's t-test on all of each side's
    samples); ``note`` says how the examples were matched, or why they were not.
    """

    a: str
    b: str
    metric: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    paired: bool
    n: int
    test: str
    note: str

    @property
    def significant(self) -> bool:
        """Whether the 95% interval of the difference excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {**asdict(self), "significant": self.significant}

    def __str__(self) -> str:
        verdict = (
            f"{self.a if self.diff > 0 else self.b} is better at 95%"
            if self.significant
            else "not distinguishable at 95% (the interval contains 0)"
        )
        return (
            f"{self.a} - {self.b}: {self.metric} {self.mean_a:.4g} - {self.mean_b:.4g} = {self.diff:+.4g}, "
            f"95% CI [{self.ci_low:+.4g}, {self.ci_high:+.4g}], p = {self.p_value:.3g} ({self.test}, "
            f"{self.n} {'pairs' if self.paired else 'examples'}): {verdict}"
        )


def compare(study: Study, a: int | str, b: int | str, metric: str = "score") -> Comparison:
    """A minus B on ``metric`` for two trials or full evaluations of ``study`` (``Study.compare`` calls this)."""
    sa, sb = side(study, a, metric), side(study, b, metric)
    return compare_sides(sa, sb, metric)


def compare_sides(sa: Side, sb: Side, metric: str = "score") -> Comparison:
    """The comparison of two sides' per-example scores (paired where they scored the same examples)."""
    x, y = sa.scores, sb.scores
    if x.size == 0 or y.size == 0:
        empty = sa.label if x.size == 0 else sb.label
        raise InvalidRequest(f"{empty} has no per-example {metric!r} samples to compare; tell it with scores=[...]")
    pairs, note = _pairs(sa, sb)
    if pairs is not None:
        d = x[pairs[0]] - y[pairs[1]]
        diff, lo, hi, p = _paired(d)
        paired, used, test = True, int(d.size), "paired t-test"
    else:
        diff, lo, hi, p = _welch(x, y)
        paired, used, test = False, int(x.size + y.size), "Welch's t-test"
    return Comparison(
        sa.label, sb.label, metric, x.size, y.size, float(x.mean()), float(y.mean()),
        diff, lo, hi, p, paired, used, test, note,
    )  # fmt: skip


def _pairs(sa: Side, sb: Side) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """Index arrays matching A's examples to B's, and how they were matched (None: they differ)."""
    n_a, n_b = sa.scores.size, sb.scores.size
    if sa.ids is not None and sb.ids is not None:
        pos_a = {k: i for i, k in enumerate(sa.ids)}
        pos_b = {k: i for i, k in enumerate(sb.ids)}
        if len(pos_a) == n_a and len(pos_b) == n_b and pos_a.keys() == pos_b.keys():
            keys = list(pos_a)
            return (
                np.array([pos_a[k] for k in keys]),
                np.array([pos_b[k] for k in keys]),
            ), f"paired by example id ({n_a} examples)"
        common = len(pos_a.keys() & pos_b.keys())
        return None, (
            f"the examples differ: {sa.label} scored {n_a}, {sb.label} {n_b}, {common} of them both; "
            "unpaired (Welch) interval"
        )
    if n_a == n_b:
        idx = np.arange(n_a)
        return (
            idx,
            idx,
        ), "paired by position: no example ids stored, so the same examples in the same order are assumed"
    return None, f"the examples differ: {sa.label} scored {n_a}, {sb.label} {n_b}; unpaired (Welch) interval"


def _paired(d: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, 95% low, high, two-sided p) of the per-example differences ``d`` (paired t-test)."""
    m = float(d.mean())
    if d.size < 2 or float(np.ptp(d)) == 0.0:
        # no spread: the difference is what it is (p 1 for none, 0 for a constant non-zero one)
        return m, m, m, 1.0 if m == 0 else (0.0 if d.size >= 2 else math.nan)
    sem = float(d.std(ddof=1)) / math.sqrt(d.size)
    return _t_test(m, sem, float(d.size - 1))


def _welch(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(mean difference, 95% low, high, two-sided p) by Welch's unequal-variance t-test."""
    m = float(x.mean() - y.mean())
    va = float(x.var(ddof=1)) / x.size if x.size > 1 else 0.0
    vb = float(y.var(ddof=1)) / y.size if y.size > 1 else 0.0
    if va + vb == 0.0:
        return m, m, m, 1.0 if m == 0 else (0.0 if x.size > 1 and y.size > 1 else math.nan)
    # Welch-Satterthwaite degrees of freedom (a side of one sample contributes no variance and no df)
    df = (va + vb) ** 2 / (
        (va**2 / (x.size - 1) if x.size > 1 else 0.0) + (vb**2 / (y.size - 1) if y.size > 1 else 0.0)
    )
    return _t_test(m, math.sqrt(va + vb), df)


def _t_test(mean: float, sem: float, df: float) -> tuple[float, float, float, float]:
    from scipy import stats  # not on tell's path: only comparisons pay for the import

    half = float(stats.t.ppf(0.975, df)) * sem
    p = float(2 * stats.t.sf(abs(mean / sem), df))
    return mean, mean - half, mean + half, p


# ---- the sides ------------------------------------------------------------------------------


def side(study: Study, ref: int | str, metric: str = "score") -> Side:
    """The per-example ``metric`` of trial number ``ref``, of full evaluation ``"full:N"`` or of ``"selected"``."""
    if isinstance(ref, str) and not ref.strip().lstrip("-").isdigit():
        return _full_side(study, ref.strip(), metric)
    if isinstance(ref, bool) or not isinstance(ref, (int, str, np.integer)):
        raise InvalidRequest(f"compare takes trial numbers, 'full:N' or 'selected'; got {ref!r:.60}")
    number = int(ref)
    from studyhall.storage._samples import read_trial_samples

    trial_id = study.trial_id(number)
    scores = read_trial_samples(study.storage, trial_id, metric)
    if scores is None:
        raise InvalidRequest(
            f"trial {number} of study {study.name!r} has no per-example {metric!r} samples; "
            "compare trials told with scores=[...] (or metrics={name: [...]})"
        )
    attrs = study.trial(number).user_attrs
    ids = attrs.get(f"{metric}.example_ids")
    if ids is None and metric == "score":
        ids = attrs.get("mipro.examples")  # MiproLoop's minibatch: valset positions, in the order scored
    ids = list(ids) if isinstance(ids, list) and len(ids) == scores.size else None
    return Side(f"trial {number}", scores, ids)


def _full_side(study: Study, ref: str, metric: str) -> Side:
    from studyhall.optimizer.mipro._loop import FULL_EVAL_ATTR

    if metric != "score":
        raise InvalidRequest(f"full evaluations keep per-example 'score' only, not {metric!r}; compare trials instead")
    attrs = study.storage.optuna.get_study_user_attrs(study._study_id)
    fulls = sorted(k for k in attrs if k.startswith(FULL_EVAL_ATTR))
    if ref == SELECTED:
        sel = study.selection
        if sel is None or sel.full_eval is None:
            raise InvalidRequest(
                f"study {study.name!r} has no selection by a full evaluation; compare trials or 'full:N'"
            )
        index = sel.full_eval
    elif ref.startswith(FULL_PREFIX) and ref[len(FULL_PREFIX) :].isdigit():
        index = int(ref[len(FULL_PREFIX) :])
    else:
        raise InvalidRequest(f"compare takes trial numbers, 'full:N' or 'selected'; got {ref!r:.60}")
    key = f"{FULL_EVAL_ATTR}{index:03d}"
    if key not in attrs:
        raise TrialNotFound(
            f"study {study.name!r} has no full evaluation {index} (it has {len(fulls)}: full:0 .. full:{len(fulls) - 1})"
            if fulls
            else f"study {study.name!r} has no full evaluations (MiproLoop records them)"
        )
    per = attrs[key].get("scores") or []
    ids = [i for i, x in enumerate(per) if x is not None]
    return Side(f"full evaluation {index}", np.array([float(per[i]) for i in ids]), ids)
