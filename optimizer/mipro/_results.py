"""What a MIPRO run found and what it cost, read back from the study.

Trials carry their minibatch in ``mipro.*`` user_attrs (scores, tokens, LLM calls);
full evaluations are study user attributes (``mipro:full_eval:000`` ...). Everything
here is computed from those, so a resumed run counts the earlier runs too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer.study._study import Study
from studyhall.optimizer.study._summary import Summary

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class FullEval:
    """One evaluation of a combination on the whole valset (kept apart from the trials).

    ``llm_calls``/``tokens`` are this evaluation's; ``study_calls``/``study_tokens``
    the study's totals once it finished (what it cost to get here). ``scores`` has
    one entry per valset example (None where it errored): the next candidates are
    compared with it example by example. ``reused`` examples were already scored
    with this combination by its trials (the same prompt on the same example) and
    cost nothing again; ``reason`` says why it was run (``first``, or ``gain``: its
    minibatch upper confidence bound beat the best full score). A challenger is
    scored in chunks and dropped (``complete`` False, ``score`` its mean so far) as
    soon as its paired bound falls below the incumbent: it can no longer win.
    """

    params: dict[str, int]
    score: float
    n: int
    errors: int
    minibatch_mean: float | None
    after_trials: int
    llm_calls: int
    tokens: int
    elapsed_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    study_calls: int = 0
    study_tokens: int = 0
    scores: list[float | None] = field(default_factory=list)
    reused: int = 0
    reason: str = ""
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what is stored as the study user attribute)."""
        return asdict(self)


@dataclass
class MiproResult:
    """What a :class:`MiproLoop` run found, and what it cost.

    ``best_*`` come from the best full evaluation (``best_full_score``); without any
    full evaluation they come from the best minibatch mean and ``best_full_score``
    is None. ``best_instructions``/``best_demos`` have one entry per predictor.
    ``llm_calls``/``tokens`` are the search's (trials and full evaluations);
    ``setup_calls``/``setup_tokens`` what making the candidates cost (proposals and
    bootstrapping, by :meth:`MiproLoop.auto`).
    Counts cover the whole study, including earlier (resumed) runs (except
    ``full_evals_skipped``: this run's consideration points at which no combination
    could beat the best full score, so no full evaluation was spent).
    """

    best_params: dict[str, int]
    best_instructions: list[str]
    best_demos: list[list[Any]]
    best_full_score: float | None
    full_evals: list[FullEval]
    llm_calls: int
    tokens: int
    study: str = ""
    trials: int = 0
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    calls_saved: int = 0
    stopped: str = "n_trials"
    elapsed_s: float = 0.0
    latency: Summary | None = None
    full_evals_skipped: int = 0
    setup_calls: int = 0
    setup_tokens: int = 0

    @property
    def best_instruction(self) -> str:
        """The best instruction of the first (often the only) predictor."""
        return self.best_instructions[0]


# ---- the trials ------------------------------------------------------------------------------


def finished_trials(study: Study) -> list[FrozenTrial]:
    """The study's complete, pruned and failed trials."""
    return study.trials(states=list(_FINISHED))


def scored(trials: Sequence[FrozenTrial]) -> int:
    """Trials that scored a minibatch (complete or pruned): what ``n_trials`` counts."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def failing(trials: Sequence[FrozenTrial], n: int) -> bool:
    """Whether the last ``n`` finished trials (by number) all failed."""
    last = sorted(trials, key=lambda t: t.number)[-n:]
    return len(last) == n and all(t.state == TrialState.FAIL for t in last)


def combo_key(params: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """A combination as a hashable, ordered key."""
    return tuple(sorted((k, int(v)) for k, v in params.items()))


Combo = tuple[tuple[str, int], ...]


def combo_scores(trials: Sequence[FrozenTrial]) -> dict[Combo, tuple[dict[int, float], int]]:
    """Per combination: its score on each valset example any of its trials scored, and its first trial.

    An example scored by several trials of the combination counts once (their mean).
    """
    pooled: dict[Combo, tuple[dict[int, list[float]], int]] = {}
    for t in trials:
        scores = t.user_attrs.get("mipro.scores")
        examples = t.user_attrs.get("mipro.examples")
        if t.state == TrialState.FAIL or not scores or not examples or not t.params:
            continue
        key = combo_key(t.params)
        per, first = pooled.setdefault(key, ({}, t.number))
        for i, x in zip(examples, scores):
            per.setdefault(int(i), []).append(float(x))
        pooled[key] = (per, min(first, t.number))
    return {k: ({i: sum(xs) / len(xs) for i, xs in per.items()}, first) for k, (per, first) in pooled.items()}


def combo_means(trials: Sequence[FrozenTrial]) -> dict[Combo, tuple[float, int, int]]:
    """Per combination: the mean over the examples its trials scored, how many, and its first trial."""
    return {
        k: (sum(per.values()) / len(per), len(per), first) for k, (per, first) in combo_scores(trials).items() if per
    }


# ---- what the study spent -------------------------------------------------------------------


def spent_tokens(trials: Sequence[FrozenTrial], fulls: Sequence[FullEval]) -> int:
    """Tokens spent by the trials and the full evaluations."""
    return sum(int(t.user_attrs.get("mipro.tokens", 0)) for t in trials) + sum(f.tokens for f in fulls)


def llm_calls(trials: Sequence[FrozenTrial], fulls: Sequence[FullEval]) -> int:
    """LLM calls made by the trials and the full evaluations."""
    return sum(int(t.user_attrs.get("mipro.llm_calls", 0)) for t in trials) + sum(f.llm_calls for f in fulls)


def tokens_per_example(trials: Sequence[FrozenTrial], fulls: Sequence[FullEval]) -> float | None:
    """Tokens per scored (or failed) example so far; None before anything was spent."""
    n = sum(len(t.user_attrs.get("mipro.scores", [])) + int(t.user_attrs.get("mipro.errors", 0)) for t in trials)
    n += sum(f.n + f.errors for f in fulls)
    tokens = spent_tokens(trials, fulls)
    return tokens / n if n and tokens else None
