"""Scoring candidates: a batch of examples through the program, and the trial function that does it.

::

    MinibatchObjective(trial)          (shipped to a pool worker with optimize)
      ── Candidates.suggest(trial) ──> instruction, demos
      ── evaluate_batch(seeded minibatch, concurrency threads, LLM calls counted)
           each score: trial.report(score, step=the example's valset index);
           every PRUNE_EVERY scores, while examples are still to be started: should_prune()
      ── Evaluation(scores, mipro.* user_attrs)
         | pruned: report(mean so far, step=MEAN_STEP) then TrialPruned
         | TooManyErrors (FAIL)

Why the steps are example indices: Optuna's WilcoxonPruner pairs the current trial
with the best one step by step, so a step must name the same example in both
(minibatches share a core of examples, see ``minibatch_indices``). Why the mean
is reported last: a PRUNED trial's value is its last intermediate value (Optuna's
rule, kept by ``Study.tell``), which must be the mean of what was scored, never one
example's score; TPE then ranks pruned trials by it.
"""

from __future__ import annotations

import contextvars
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from studyhall.bridge import current_recorder
from studyhall.optimizer import services
from studyhall.optimizer.mipro._candidates import SHARED_MIN, Candidates, minibatch_indices
from studyhall.optimizer.optimize._evaluation import Evaluation
from studyhall.storage import StudyhallError

# Ask the pruner every few examples, not after each: a verdict reads the best trial
# from the storage (~20 ms on SQLite). And not before 15: on 13 or fewer tied 0/1
# differences scipy's signed-rank test runs an exact permutation test (~0.25 s each).
PRUNE_EVERY = 5
PRUNE_START = SHARED_MIN


class TooManyErrors(StudyhallError):
    """More examples of a minibatch failed (after the LLM client's retries) than ``max_errors``."""


class _CountingLM:
    """Wraps the LM handed to the program: counts calls and tokens of this evaluation."""

    def __init__(self, lm: Any) -> None:
        self._lm = lm
        self._lock = threading.Lock()
        self.calls = 0
        self.tokens = 0
        self.latencies: list[float] = []

    def _count(self, c: Any) -> None:
        if getattr(c, "cached", False) is True:  # the client's cache answered: no call was made
            return
        with self._lock:
            self.calls += 1
            self.tokens += int(getattr(c, "prompt_tokens", 0) or 0) + int(getattr(c, "completion_tokens", 0) or 0)
            lat = getattr(c, "latency_s", None)
            if isinstance(lat, (int, float)):
                self.latencies.append(float(lat))

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        c = self._lm.chat(*args, **kwargs)
        self._count(c)
        return c

    def chat_many(self, *args: Any, **kwargs: Any) -> Any:
        out = self._lm.chat_many(*args, **kwargs)
        for c in out:
            if not isinstance(c, BaseException):
                self._count(c)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)


def resolve_lm(lm: Any) -> Any:
    """The LM itself, or the registered service it names."""
    return services.get(lm) if isinstance(lm, str) else lm


def mean_step(n_examples: int) -> int:
    """The step a pruned trial reports its mean at: after every example index of the valset."""
    return n_examples


@dataclass
class Batch:
    """What evaluating some examples gave: scores by position, errors, and the cost."""

    indices: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    calls: int = 0
    tokens: int = 0
    skipped: int = 0
    pruned: bool = False
    latencies: list[float] = field(default_factory=list)

    def ordered(self) -> tuple[list[int], list[float]]:
        """The scored examples' valset indices and their scores, in minibatch order."""
        pos = sorted(self.scores)
        return [self.indices[p] for p in pos], [self.scores[p] for p in pos]

    @property
    def calls_saved(self) -> int:
        """LLM calls the skipped examples would have cost, at this batch's calls per example."""
        started = len(self.indices) - self.skipped
        per_example = self.calls / started if started else 1.0
        return int(round(self.skipped * per_example))


def _one(
    program: Callable[..., Any], metric: Callable[..., Any], example: Any, instruction: Any, demos: Any, lm: Any
) -> float:
    prediction = program(example, instruction, demos, lm)
    score = float(metric(example, prediction))
    if not math.isfinite(score):
        raise ValueError(f"the metric returned {score} for an example; return a finite number")
    return score


def evaluate_batch(
    program: Callable[..., Any],
    metric: Callable[..., Any],
    lm: Any,
    examples: Sequence[Any],
    indices: Sequence[int],
    instruction: Any,
    demos: Any,
    *,
    concurrency: int = 8,
    max_errors: int | None = None,
    trial: Any = None,
    prune_every: int = PRUNE_EVERY,
) -> Batch:
    """Score ``examples[i]`` for each i in ``indices``, at most ``concurrency`` at a time.

    An example whose program or metric raised (e.g. an LLM call that failed after
    the client's retries) is an error, not a score. With ``trial``, each score is
    reported at its example's index (``indices[pos]``: the same step in every trial)
    and every ``prune_every`` scores the trial's pruner is asked, but only while
    examples remain to be started (after that, pruning would save nothing); once it
    says prune, examples not yet started are skipped (those in flight finish and
    are kept). Past ``max_errors`` errors the rest is skipped too.
    """
    batch = Batch(list(indices))
    counting = _CountingLM(lm)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="mipro-eval")
    futures: dict[Future[float], int] = {}
    todo = iter(enumerate(batch.indices))

    def submit_next() -> None:
        nxt = next(todo, None)
        if nxt is not None:
            # each task runs in its own copy of this context, so the trial's telemetry
            # recorder and service overrides reach the program's threads
            ctx = contextvars.copy_context()
            pos, idx = nxt
            futures[pool.submit(ctx.run, _one, program, metric, examples[idx], instruction, demos, counting)] = pos

    try:
        for _ in range(max(1, concurrency)):  # a window, not everything: pruning must be able to save calls
            submit_next()
        pending, stop = set(futures), False
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: futures[f]):
                pos = futures[fut]
                exc = fut.exception()
                if exc is not None:
                    batch.errors[pos] = f"{type(exc).__name__}: {exc}"
                    stop = stop or (max_errors is not None and len(batch.errors) > max_errors)
                    continue
                batch.scores[pos] = fut.result()
                if trial is not None and not stop:
                    trial.report(batch.scores[pos], batch.indices[pos])
                    n = len(batch.scores)
                    left = len(batch.indices) - len(futures)  # examples not started yet: what pruning saves
                    if left > 0 and n >= PRUNE_START and n % prune_every == 0 and trial.should_prune():
                        batch.pruned = stop = True
            if not stop:
                before = len(futures)
                for _ in done:
                    submit_next()
                pending |= {f for f in list(futures)[before:]}
        batch.skipped = len(batch.indices) - len(futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    batch.calls, batch.tokens, batch.latencies = counting.calls, counting.tokens, counting.latencies
    return batch


@dataclass
class MinibatchObjective:
    """The trial function shipped to pool workers: pick a combination, score a minibatch."""

    program: Callable[..., Any]
    metric: Callable[..., Any]
    lm: Any
    valset: list[Any]
    candidates: Candidates
    minibatch_size: int
    seed: int
    concurrency: int
    max_errors: int
    prune: bool

    def __call__(self, trial: Any) -> Evaluation:
        """Score one minibatch with the combination ``trial`` suggests (runs in a pool worker)."""
        params = self.candidates.suggest(trial)
        idx = minibatch_indices(self.seed, int(trial.number), len(self.valset), self.minibatch_size)
        instruction, demos = self.candidates.program_args(params)
        batch = evaluate_batch(
            self.program,
            self.metric,
            resolve_lm(self.lm),
            self.valset,
            idx,
            instruction,
            demos,
            concurrency=self.concurrency,
            max_errors=self.max_errors,
            trial=trial if self.prune else None,
        )
        examples, scores = batch.ordered()
        attrs: dict[str, Any] = {
            "mipro.examples": examples,
            "mipro.scores": scores,
            "mipro.errors": len(batch.errors),
            "mipro.llm_calls": batch.calls,
            "mipro.tokens": batch.tokens,
            "mipro.skipped": batch.skipped,
            "mipro.calls_saved": batch.calls_saved if batch.pruned else 0,
        }
        ins, _ = self.candidates.chosen(params)
        for i, text in enumerate(ins):
            attrs[f"mipro.{i}_instruction"] = text[:300]
        rec = current_recorder()
        if rec is not None and batch.latencies and "llm.latency_s" not in rec.samples:
            for lat in batch.latencies:  # an LM that records nothing itself still shows its latency
                rec.observe("llm.latency_s", lat)
        if len(batch.errors) > self.max_errors or batch.pruned:
            for k, v in attrs.items():  # a FAIL/PRUNED trial keeps only attributes set on the trial
                trial.set_user_attr(k, v)
            if batch.pruned:
                # the trial's value is its last intermediate value: make it the mean so far
                trial.report(sum(scores) / len(scores), mean_step(len(self.valset)))
                raise optuna.TrialPruned(f"pruned after {len(scores)} of {len(idx)} examples")
            first = next(iter(batch.errors.values()))
            raise TooManyErrors(
                f"{len(batch.errors)} of {len(idx)} examples failed (max_errors={self.max_errors}), e.g. {first}; "
                "the trial is FAIL rather than a low score. Check the provider, or raise max_errors"
            )
        return Evaluation(scores=scores, user_attrs=attrs)


class QuietWilcoxon(optuna.pruners.BasePruner):
    """Optuna's WilcoxonPruner without its warnings.

    The pruner warns when the current trial has steps the best trial lacks (an
    example that errored in the best trial); the comparison just ignores them, and
    a warning per example would flood the log (and fail test runs).
    """

    def __init__(self, p_threshold: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._inner = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=PRUNE_START)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """WilcoxonPruner's verdict, its warnings silenced."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._inner.prune(study, trial)
