"""Which combination deserves a full evaluation: only one that could still change the answer.

::

    no full evaluation yet ──> the best minibatch mean (earliest on ties)      reason "first"
    an incumbent (best full score F, its score on every valset example) ──>
        for each combination not fully evaluated, on the examples its trials scored:
            d_i = its score - the incumbent's score on the same example   (paired)
            gain = mean(d), ucb = gain + z * sd(d) / sqrt(n)
        ucb > MARGIN (it may beat F by more) ──> the highest estimate F + gain  reason "gain"
            scored in chunks (a race): after each, race_bound on everything it scored,
            a bound on its FINAL full-score gain (only the examples left are uncertain);
            once it is <= MARGIN the challenger is dropped unfinished
        none ──> no full evaluation: nothing could change the answer

DSPy's MIPROv2 full-evaluates the best-mean combination not yet evaluated every few
trials, however far below the incumbent its minibatch mean is; pairing by example
makes the comparison tight (both sides scored the same examples), so a clearly
worse combination is skipped after one minibatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from studyhall.optimizer.mipro._results import Combo, FullEval, combo_key

# The fewest paired examples on which a combination may be judged against the incumbent.
MIN_PAIRED = 5
# A gain worth a full evaluation: a challenger must possibly beat the incumbent's full
# score by more than this (a closer one would change the answer by less than its cost).
MARGIN = 0.03


@dataclass(frozen=True)
class Pick:
    """A combination to evaluate fully, and why: its minibatch mean, or its paired estimate against the incumbent."""

    key: Combo
    reason: str
    minibatch_mean: float
    estimate: float | None = None
    ucb: float | None = None


def incumbent(fulls: Sequence[FullEval]) -> FullEval | None:
    """The best complete full evaluation so far (the earliest on ties), or None."""
    done = [f for f in fulls if f.complete]
    return max(done, key=lambda f: (f.score, -f.after_trials)) if done else None


def paired_gain(per: dict[int, float], inc: FullEval, z: float) -> tuple[float, float, int] | None:
    """(mean gain, its upper confidence bound, n) of a combination over the incumbent on shared examples."""
    ref = inc.scores
    d = [x - ref[i] for i, x in per.items() if 0 <= i < len(ref) and ref[i] is not None]  # type: ignore[operator]
    n = len(d)
    if n < MIN_PAIRED:
        return None
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, mean + z * sd / math.sqrt(n), n


def race_bound(per: dict[int, float], inc: FullEval, z: float, total: int) -> tuple[float, float, int] | None:
    """(mean gain so far, upper bound of its FINAL full-score gain over the incumbent, n) in a race.

    What decides a race is the challenger's full score against the incumbent's, so the
    bound is on the gain over all ``total`` examples: the ``n`` scored ones are known,
    only the ``m`` left are uncertain (their mean: the estimate's error plus their own
    sampling noise). It narrows to the exact outcome as the race nears its end, where
    ``paired_gain``'s bound on the true gain stays wide.
    """
    g = paired_gain(per, inc, z)
    if g is None:
        return None
    mean, ucb, n = g
    m = max(0, total - n)
    sd = (ucb - mean) / z * math.sqrt(n) if z > 0 else 0.0
    return mean, mean + z * (m / total) * sd * math.sqrt(1 / n + (1 / m if m else 0.0)), n


def pick_full_eval(
    combos: dict[Combo, tuple[dict[int, float], int]], fulls: Sequence[FullEval], z: float, *, final: bool = False
) -> Pick | None:
    """The next combination to evaluate fully, or None when none could beat the incumbent.

    Args:
        combos: per combination, its score per scored valset example and its first trial.
        fulls: the full evaluations so far.
        z: how many standard errors of optimism a combination gets (larger: more full evaluations).
        final: the search is over (no trial will add evidence): a challenger must also be
            ahead of the incumbent on the examples both scored (its paired estimate above
            zero), not only possibly ahead; one behind is, on the evidence, worse, and a
            full evaluation of it would mostly confirm that at the price of a valset.
    """
    done = {combo_key(f.params) for f in fulls}
    todo = {k: v for k, v in combos.items() if k not in done and v[0]}
    if not todo:
        return None
    inc = incumbent(fulls)
    if inc is None or not inc.scores:  # (a full evaluation stored by an older version has no per-example scores)
        if inc is not None or fulls:
            return None
        mean, _, key = max((sum(per.values()) / len(per), -first, k) for k, (per, first) in todo.items())
        return Pick(key, "first", mean)
    best: Pick | None = None
    for key, (per, _) in todo.items():
        g = paired_gain(per, inc, z)
        if g is None or g[1] <= MARGIN or (final and g[0] <= 0):
            continue
        pick = Pick(key, "gain", sum(per.values()) / len(per), inc.score + g[0], inc.score + g[1])
        if best is None or (pick.estimate, pick.ucb) > (best.estimate, best.ucb):
            best = pick
    return best
