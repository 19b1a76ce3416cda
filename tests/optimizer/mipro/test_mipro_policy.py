"""The full-evaluation policy's race bound (issue 14: fewer calls on DSPy's candidate spaces)."""

from __future__ import annotations

from typing import Any

import pytest

from studyhall.optimizer.mipro._policy import MARGIN, paired_gain, race_bound
from studyhall.optimizer.mipro._results import FullEval

N = 100


def _incumbent(scores: list[float]) -> FullEval:
    return FullEval(
        params={"0_instruction": 0},
        score=sum(scores) / len(scores),
        n=len(scores),
        errors=0,
        minibatch_mean=None,
        after_trials=10,
        llm_calls=0,
        tokens=0,
        elapsed_s=0.0,
        scores=list(scores),
    )


def _challenger(n: int, losses: int, wins: int) -> dict[int, float]:
    """Scored on the first ``n`` examples: like the incumbent except ``losses`` where it is 0 and ``wins`` where it is 1."""
    per = {i: float(i % 2) for i in range(n)}
    for i in range(wins):
        per[2 * i] = 1.0  # incumbent 0 there
    for i in range(losses):
        per[2 * i + 1] = 0.0  # incumbent 1 there
    return per


INC = _incumbent([float(i % 2) for i in range(N)])


def test_a_challenger_that_can_no_longer_win_the_full_score_is_dropped_late_in_the_race() -> None:
    # 90 of 100 scored, 1 example behind (20 worse, 19 better, so a wide spread): only 10
    # examples are left, so its full score cannot end MARGIN above the incumbent's; the
    # bound on its *true* gain (what the race used before) is still above MARGIN
    per = _challenger(90, losses=20, wins=19)
    before = paired_gain(per, INC, 1.0)
    after = race_bound(per, INC, 1.0, N)
    assert before is not None and after is not None
    assert before[1] > MARGIN  # before: raced to the end, 10 more calls for nothing
    assert after[1] <= MARGIN
    assert after[0] == pytest.approx(before[0]) and after[2] == before[2] == 90


@pytest.mark.parametrize("n", [15, 25, 50, 75, 99])
def test_the_race_bound_is_never_wider_than_the_true_gain_bound_and_exact_at_the_end(n: int) -> None:
    per = _challenger(n, losses=3, wins=4)
    g, r = paired_gain(per, INC, 1.0), race_bound(per, INC, 1.0, N)
    assert g is not None and r is not None
    assert g[0] <= r[1] <= g[1]
    done = race_bound(_challenger(N, losses=3, wins=4), INC, 1.0, N)
    assert done is not None and done[1] == pytest.approx(done[0])  # nothing left: the outcome is known


def test_the_race_bound_needs_the_same_paired_examples_as_the_pick() -> None:
    assert race_bound(_challenger(4, losses=0, wins=2), INC, 1.0, N) is None


# ---- the loop's race uses it -----------------------------------------------------------------


def _inc_right(i: int) -> bool:
    return i % 2 == 1


def _challenger_right(i: int) -> bool:
    """As the incumbent, except in every 10 examples 2 it gets wrong and 2 it gets right: level, widely spread."""
    return i % 10 in (0, 2) or (_inc_right(i) and i % 10 not in (1, 3))


class _Calls:
    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages: Any, **kw: Any) -> Any:
        from studyhall.bridge import Completion

        self.calls += 1
        return Completion("", "m", 1, 1, 0.0, 1)


def _level(example: dict, instruction: str, demos: list, lm: Any) -> float:
    lm.chat([{"role": "user", "content": "x"}])
    right = _challenger_right(example["i"]) if instruction == "challenger" else _inc_right(example["i"])
    return 1.0 if right else 0.0


def test_the_loop_drops_a_level_challenger_before_the_last_chunk(sqlite_url: str, study_name: str) -> None:
    from studyhall.optimizer import MiproLoop
    from studyhall.optimizer.mipro._policy import Pick
    from studyhall.optimizer.mipro._progress import LoopProgress
    from studyhall.optimizer.mipro._results import combo_key

    lm = _Calls()
    loop = MiproLoop(
        _level,
        lambda ex, pred: pred,
        instructions=["incumbent", "challenger"],
        valset=[{"i": i} for i in range(N)],
        lm=lm,
        study=study_name,
        storage=sqlite_url,
        workers=0,
        concurrency=8,
    )
    study = loop.open_study(1)
    inc = _incumbent([1.0 if _inc_right(i) else 0.0 for i in range(N)])
    pick = Pick(combo_key({"0_instruction": 1}), "gain", 0.5)
    assert loop._full_eval(study, [], [inc], LoopProgress(False, study, 1), pick) is True
    fe = loop.full_evals(study)[-1]
    # level with the incumbent after each chunk of 10, with a spread that kept the old bound
    # (true gain, 0 + sd/sqrt(n)) above MARGIN to the end: 100 calls before, now dropped once
    # the examples left cannot lift its full score MARGIN above the incumbent's
    assert not fe.complete and fe.n < N and lm.calls == fe.n == fe.llm_calls
