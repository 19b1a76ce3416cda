"""``MiproLoop``: a MIPROv2-style search over instructions and few-shot demos (as in DSPy).

::

    run(n_trials) ── per round of `full_eval_every` trials ──────────────────────────────
    │  study.optimize(_MinibatchObjective, workers=N, space={i_instruction, i_demos})
    │     TPE (multivariate, constant liar) picks a combination in the parent;
    │     pool worker: seeded minibatch of valset ──> program(ex, instruction, demos, lm)
    │                  x concurrency threads, LLM calls under the shared RateLimiter
    │                  ──> metric ──> per-example scores  (trial.report + should_prune
    │                  with WilcoxonPruner when prune=True)
    │     trial: COMPLETE(value = minibatch mean, distribution kept) | PRUNED | FAIL
    ├─ full evaluation (this process): the best-mean combination not yet fully
    │  evaluated, scored on the whole valset ──> study user attr "mipro:full_eval:NNN"
    └─ token budget checked before each round and each full evaluation

What TPE sees, and what it does not: every minibatch trial is an ordinary trial
whose value is its minibatch mean; a pruned trial is PRUNED (TPE ranks it below
the completed ones); a trial with more than ``max_errors`` failed examples is FAIL
(TPE ignores it) instead of DSPy's low score from errors counted as 0
(stanfordnlp/dspy#1405). Full evaluations are NOT trials: DSPy adds them to the
study as extra trials, so TPE mixes whole-valset means with noisier minibatch means
of the same parameters. Here they are study user attributes (one per evaluation,
``mipro:full_eval:000`` ...), read back on resume, and only pick the final answer.

The study, its trials and the full evaluations live in the storage, so running the
same loop again with the same study name resumes where it stopped; trials of
a killed run are failed as stale and retried by the study's retry policy.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import random
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studyhall.bridge import current_recorder, recording
from studyhall.optimizer import services
from studyhall.optimizer.optimize._evaluation import Evaluation
from studyhall.optimizer.study._space import Categorical
from studyhall.optimizer.study._study import Study
from studyhall.optimizer.study._summary import Summary, summarize
from studyhall.storage import InvalidRequest, Storage, StudyhallError, retrying

_log = logging.getLogger("studyhall.mipro")
FULL_EVAL_ATTR = "mipro:full_eval:"
CONFIG_ATTR = "mipro:config"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Ask the pruner every few examples, not after each: a verdict reads the best trial
# from the storage (~20 ms on SQLite). And not before 15: on 13 or fewer tied 0/1
# differences scipy's signed-rank test runs an exact permutation test (~0.25 s each).
PRUNE_EVERY = 5
PRUNE_START = 15


class TooManyErrors(StudyhallError):
    """More examples of a minibatch failed (after the LLM client's retries) than ``max_errors``."""


# ---- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FullEval:
    """One evaluation of a combination on the whole valset (kept apart from the trials).

    ``llm_calls``/``tokens`` are this evaluation's; ``study_calls``/``study_tokens``
    the study's totals once it finished (what it cost to get here).
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

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what is stored as the study user attribute)."""
        return asdict(self)


@dataclass
class MiproResult:
    """What a :class:`MiproLoop` run found, and what it cost.

    ``best_*`` come from the best full evaluation (``best_full_score``); without any
    full evaluation they come from the best minibatch mean and ``best_full_score``
    is None. ``best_instructions``/``best_demos`` have one entry per predictor.
    Counts cover the whole study, including earlier (resumed) runs.
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

    @property
    def best_instruction(self) -> str:
        """The best instruction of the first (often the only) predictor."""
        return self.best_instructions[0]


# ---- counting the program's LLM calls ------------------------------------------------------


class _CountingLM:
    """Wraps the LM handed to the program: counts calls and tokens of this evaluation."""

    def __init__(self, lm: Any) -> None:
        self._lm = lm
        self._lock = threading.Lock()
        self.calls = 0
        self.tokens = 0
        self.latencies: list[float] = []

    def _count(self, c: Any) -> None:
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


def _resolve_lm(lm: Any) -> Any:
    return services.get(lm) if isinstance(lm, str) else lm


# ---- the candidates ------------------------------------------------------------------------


class _Candidates:
    """Instruction and demo-set candidates per predictor, and the categorical space over them."""

    def __init__(self, instructions: Any, demos: Any) -> None:
        self.instructions = _per_predictor_instructions(instructions)
        n = len(self.instructions)
        self.demos = _per_predictor_demos(demos, n)
        self.single = n == 1 and (isinstance(instructions, Sequence) and all(isinstance(x, str) for x in instructions))

    @property
    def n_predictors(self) -> int:
        return len(self.instructions)

    def space(self) -> dict[str, Categorical]:
        sp: dict[str, Categorical] = {}
        for i, ins in enumerate(self.instructions):
            sp[f"{i}_instruction"] = Categorical(range(len(ins)))
            if len(self.demos[i]) > 1:  # a single demo set is no choice
                sp[f"{i}_demos"] = Categorical(range(len(self.demos[i])))
        return sp

    def defaults(self) -> dict[str, int]:
        return {name: 0 for name in self.space()}

    def suggest(self, trial: Any) -> dict[str, int]:
        return {name: int(trial.suggest_categorical(name, list(c.choices))) for name, c in self.space().items()}

    def chosen(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        ins = [self.instructions[i][int(params.get(f"{i}_instruction", 0))] for i in range(self.n_predictors)]
        dem = [list(self.demos[i][int(params.get(f"{i}_demos", 0))]) if self.demos[i] else [] for i in range(self.n_predictors)]
        return ins, dem

    def program_args(self, params: Mapping[str, Any]) -> tuple[Any, Any]:
        """What ``program`` receives: a str and a demo list (one predictor) or lists of them."""
        ins, dem = self.chosen(params)
        return (ins[0], dem[0]) if self.single else (ins, dem)

    def fingerprint(self) -> str:
        blob = json.dumps([self.instructions, self.demos], sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _per_predictor_instructions(instructions: Any) -> list[list[str]]:
    hint = "pass a list of instruction strings (one predictor) or one such list per predictor"
    if isinstance(instructions, Mapping):
        instructions = [instructions[k] for k in sorted(instructions)]
    if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
        raise InvalidRequest(f"instructions: {hint}; got {instructions!r:.80}")
    if all(isinstance(x, str) for x in instructions):
        return [list(instructions)]
    out = []
    for i, ins in enumerate(instructions):
        if isinstance(ins, str) or not isinstance(ins, Sequence) or not ins or not all(isinstance(x, str) for x in ins):
            raise InvalidRequest(f"instructions of predictor {i}: {hint}; got {ins!r:.80}")
        out.append(list(ins))
    return out


def _per_predictor_demos(demos: Any, n: int) -> list[list[list[Any]]]:
    hint = "a list of demo sets (each a list of examples) for one predictor, or one such list per predictor"
    if demos is None:
        return [[] for _ in range(n)]
    if isinstance(demos, Mapping):
        demos = [demos.get(k, demos.get(str(k), [])) for k in range(n)]
    if not isinstance(demos, Sequence) or isinstance(demos, str):
        raise InvalidRequest(f"demos: pass {hint}; got {type(demos).__name__}")
    per = [demos] if n == 1 else list(demos)
    if len(per) != n:
        raise InvalidRequest(f"demos: {n} predictors need {n} lists of demo sets; got {len(per)}")
    out = []
    for i, sets in enumerate(per):
        if not isinstance(sets, Sequence) or any(isinstance(s, str) or not isinstance(s, Sequence) for s in sets):
            raise InvalidRequest(f"demos of predictor {i}: pass {hint}")
        out.append([list(s) for s in sets])
    return out


def labeled_demo_sets(trainset: Sequence[Any], n_sets: int = 5, max_demos: int = 4, seed: int = 0) -> list[list[Any]]:
    """Demo-set candidates from labeled examples: set 0 is zero-shot, then random sets of 1..max_demos."""
    if not trainset:
        raise InvalidRequest("labeled_demo_sets needs a non-empty trainset")
    rng = random.Random(f"labeled:{seed}")
    sets: list[list[Any]] = [[]]
    for j in range(1, n_sets):
        k = min(len(trainset), 1 + (j - 1) % max_demos)
        sets.append(rng.sample(list(trainset), k))
    return sets


def minibatch_indices(seed: int, trial_number: int, n: int, size: int) -> list[int]:
    """The valset indices trial ``trial_number`` evaluates: a seeded sample without replacement."""
    return random.Random(f"minibatch:{seed}:{trial_number}").sample(range(n), min(size, n))


# ---- evaluating a batch of examples --------------------------------------------------------


@dataclass
class _Batch:
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
        pos = sorted(self.scores)
        return [self.indices[p] for p in pos], [self.scores[p] for p in pos]

    @property
    def calls_saved(self) -> int:
        started = len(self.indices) - self.skipped
        per_example = self.calls / started if started else 1.0
        return int(round(self.skipped * per_example))


def _one(program: Callable[..., Any], metric: Callable[..., Any], example: Any, instruction: Any, demos: Any, lm: Any) -> float:
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
) -> _Batch:
    """Score ``examples[i]`` for each i in ``indices``, at most ``concurrency`` at a time.

    An example whose program or metric raised (e.g. an LLM call that failed after
    the client's retries) is an error, not a score. With ``trial``, each score is
    reported at its position in the batch and every ``prune_every`` scores the
    trial's pruner is asked; once it says prune, examples not yet started are
    skipped (those in flight finish). Past ``max_errors`` errors the rest is skipped too.
    """
    batch = _Batch(list(indices))
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
                    trial.report(batch.scores[pos], pos)
                    n = len(batch.scores)
                    if n >= PRUNE_START and n % prune_every == 0 and trial.should_prune():
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
class _MinibatchObjective:
    """The trial function shipped to pool workers: pick a combination, score a minibatch."""

    program: Callable[..., Any]
    metric: Callable[..., Any]
    lm: Any
    valset: list[Any]
    candidates: _Candidates
    minibatch_size: int
    seed: int
    concurrency: int
    max_errors: int
    prune: bool

    def __call__(self, trial: Any) -> Evaluation:
        params = self.candidates.suggest(trial)
        idx = minibatch_indices(self.seed, int(trial.number), len(self.valset), self.minibatch_size)
        instruction, demos = self.candidates.program_args(params)
        batch = evaluate_batch(
            self.program,
            self.metric,
            _resolve_lm(self.lm),
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
                raise optuna.TrialPruned(f"pruned after {len(scores)} of {len(idx)} examples")
            first = next(iter(batch.errors.values()))
            raise TooManyErrors(
                f"{len(batch.errors)} of {len(idx)} examples failed (max_errors={self.max_errors}), e.g. {first}; "
                "the trial is FAIL rather than a low score. Check the provider, or raise max_errors"
            )
        return Evaluation(scores=scores, user_attrs=attrs)


# ---- the loop ------------------------------------------------------------------------------


class MiproLoop:
    """MIPROv2-style optimization of instructions and few-shot demos, trials in parallel.

    Args:
        program: ``program(example, instruction, demos, lm) -> prediction``; with one
            predictor ``instruction`` is a str and ``demos`` the chosen demo set, with
            several both are lists indexed by predictor.
        metric: ``metric(example, prediction) -> float``.
        instructions: instruction candidates: a list of str (one predictor) or one
            list per predictor; candidate 0 is the program's default.
        demos: demo-set candidates (each a list of examples) for one predictor, or one
            list of them per predictor; set 0 is the default. None: built from
            ``trainset`` by :func:`labeled_demo_sets`, or no demos without one.
        valset: the examples scored (minibatches of it, and all of it for full evals);
            defaults to ``trainset``.
        lm: an LLM client (``bridge.LLMClient``) or the name of a registered service.
        minibatch_size: examples per trial (DSPy's default, 35).
        full_eval_every: trials between full evaluations of the best-mean combination.
        workers: trials in flight at once, each in a pool worker (0: this thread).
        concurrency: LLM calls in flight per trial (under the client's rate limiter).
        max_errors: failed examples a trial tolerates (default 10% of a minibatch);
            past it the trial is FAIL, never a low score.
        prune: stop clearly worse trials early with Optuna's WilcoxonPruner.
        max_tokens_total: stop before starting trials (or a full evaluation) whose
            estimated tokens, from the trials so far, would exceed this budget.

    Example:
        >>> loop = MiproLoop(solve, exact_match, instructions=[...], demos=[...],
        ...                  valset=val, lm=client, study="qa-mipro", workers=2)  # doctest: +SKIP
        >>> result = loop.run(n_trials=30)  # doctest: +SKIP
        >>> result.best_instruction, result.best_full_score  # doctest: +SKIP
    """

    def __init__(
        self,
        program: Callable[..., Any],
        metric: Callable[..., Any],
        *,
        instructions: Any,
        demos: Any = None,
        valset: Sequence[Any] | None = None,
        trainset: Sequence[Any] | None = None,
        lm: Any,
        study: str = "mipro",
        storage: str | Storage | None = None,
        minibatch_size: int = 35,
        full_eval_every: int = 5,
        seed: int = 0,
        workers: int = 1,
        concurrency: int = 8,
        max_errors: int | None = None,
        prune: bool = False,
        prune_p: float = 0.1,
        max_tokens_total: int | None = None,
        trial_timeout: float | None = None,
        retries: int = 1,
        sampler: str | optuna.samplers.BaseSampler | None = None,
        progress: bool = False,
    ) -> None:
        if not callable(program) or not callable(metric):
            raise InvalidRequest("program and metric must be callables: program(example, instruction, demos, lm), metric(example, prediction)")
        data = valset if valset is not None else trainset
        if data is None or len(data) == 0:
            raise InvalidRequest("MiproLoop needs a non-empty valset (or trainset) to score candidates on")
        int_args = (
            ("minibatch_size", minibatch_size, 1), ("full_eval_every", full_eval_every, 1),
            ("concurrency", concurrency, 1), ("workers", workers, 0), ("retries", retries, 0),
        )
        for name, v, low in int_args:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidRequest(f"{name} must be an integer >= {low}; got {v!r}")
        if max_tokens_total is not None and (not isinstance(max_tokens_total, int) or max_tokens_total < 1):
            raise InvalidRequest(f"max_tokens_total must be a positive integer (or None); got {max_tokens_total!r}")
        if not 0.0 < prune_p < 1.0:
            raise InvalidRequest(f"prune_p is a p-value threshold in (0, 1); got {prune_p!r}")
        if demos is None and trainset is not None:
            demos = labeled_demo_sets(trainset, seed=seed)
        self.candidates = _Candidates(instructions, demos)
        self.program, self.metric, self.lm = program, metric, lm
        self.valset = list(data)
        self.study_name, self.storage = study, storage
        self.minibatch_size = min(minibatch_size, len(self.valset))
        self.full_eval_every, self.seed, self.workers, self.concurrency = full_eval_every, seed, workers, concurrency
        self.max_errors = max_errors if max_errors is not None else max(1, self.minibatch_size // 10)
        self.prune, self.prune_p, self.max_tokens_total = prune, prune_p, max_tokens_total
        self.trial_timeout, self.retries, self.sampler, self.progress = trial_timeout, retries, sampler, progress
        self._latencies: list[float] = []

    # ---- set-up ------------------------------------------------------------------------

    def _pruner(self) -> optuna.pruners.BasePruner | None:
        if not self.prune:
            return None
        return _QuietWilcoxon(self.prune_p)

    def open_study(self) -> Study:
        """Create the study, or load it to resume (it must have been run with the same candidates)."""
        from studyhall.optimizer.study._orchestrator import Orchestrator

        orch = Orchestrator(self.storage)
        fresh = self.study_name not in orch.study_names()
        study = orch.create_study(
            self.study_name, direction="maximize", sampler=self.sampler, seed=self.seed, pruner=self._pruner(), load_if_exists=True
        )
        config = {"candidates": self.candidates.fingerprint(), "valset": len(self.valset), "minibatch_size": self.minibatch_size, "seed": self.seed}
        attrs = study.optuna.user_attrs
        saved = attrs.get(CONFIG_ATTR)
        if saved is None:
            retrying(study.optuna.set_user_attr, CONFIG_ATTR, config)
        elif saved != config:
            raise InvalidRequest(
                f"study {self.study_name!r} was run with other candidates or data ({saved}, now {config}); "
                "resume with the same ones, or pass a new study name"
            )
        if fresh:  # the program as it is (instruction 0, demo set 0) is the baseline, as in DSPy
            study.enqueue(self.candidates.defaults())
        return study

    # ---- the run -----------------------------------------------------------------------

    def run(self, n_trials: int = 30) -> MiproResult:
        """Run until the study has ``n_trials`` scored (complete or pruned) trials.

        Failed trials (too many LLM errors, a crash, a dead process) do not count,
        so their retries and replacements run; ``stopped == "failing"`` when the
        last trials all failed. The count is the study's, so a second run resumes.
        Returns the best combination by full-valset score with the whole study's cost.
        """
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise InvalidRequest(f"n_trials must be an integer >= 1; got {n_trials!r}")
        start = time.monotonic()
        study = self.open_study()
        objective = _MinibatchObjective(
            self.program, self.metric, self.lm, self.valset, self.candidates, self.minibatch_size,
            self.seed, self.concurrency, self.max_errors, self.prune,
        )
        stopped = "n_trials"
        bar = _LoopProgress(self.progress, study, n_trials)
        try:
            while True:
                trials = _finished(study)
                fulls = self.full_evals(study)
                last = max((f.after_trials for f in fulls), default=0)
                n = _scored(trials)
                if n - last >= self.full_eval_every and not self._full_eval(study, trials, fulls, bar):
                    stopped = "max_tokens_total"
                    break
                if n >= n_trials:
                    break
                if _failing(trials, max(2, self.full_eval_every)):
                    stopped = "failing"
                    _log.warning("the last trials all failed; stopping (their 'error' attribute says why)")
                    break
                k = min(self.full_eval_every - (n - last) % self.full_eval_every, n_trials - n)
                k = self._affordable(trials, fulls, k)
                if k < 1:
                    stopped = "max_tokens_total"
                    break
                study.optimize(
                    objective, n_trials=k, workers=min(self.workers, k), trial_timeout=self.trial_timeout,
                    retries=self.retries, space=self.candidates.space(), progress=False,
                )
                bar.update()
            trials = _finished(study)
            fulls = self.full_evals(study)
            last = max((f.after_trials for f in fulls), default=0)
            if _scored(trials) > last and stopped != "failing":
                self._full_eval(study, trials, fulls, bar)
        finally:
            bar.close()
        return self._result(study, stopped, time.monotonic() - start)

    def _full_eval(self, study: Study, trials: list[FrozenTrial], fulls: list[FullEval], bar: _LoopProgress) -> bool:
        """Score the best-mean combination not yet fully evaluated on the whole valset.

        Returns False when the budget forbids it; True otherwise (also when there is nothing to do).
        """
        if self._over_budget(trials, fulls, full=True):
            return False
        done = {_key(f.params) for f in fulls}
        means = _combo_means(trials)
        todo = [(mean, -first, key) for key, (mean, _, first) in means.items() if key not in done]
        if not todo:
            return True
        mean, _, key = max(todo)
        params = dict(key)
        instruction, demos = self.candidates.program_args(params)
        bar.phase(f"full eval of {params}")
        t0 = time.monotonic()
        with recording():
            batch = evaluate_batch(
                self.program, self.metric, _resolve_lm(self.lm), self.valset, range(len(self.valset)), instruction, demos,
                concurrency=self.concurrency * max(1, self.workers),
            )
        self._latencies.extend(batch.latencies)
        _, scores = batch.ordered()
        summary = summarize(scores) if scores else None
        fe = FullEval(
            params=params,
            score=float(summary.mean) if summary else 0.0,
            n=len(scores),
            errors=len(batch.errors),
            minibatch_mean=mean,
            after_trials=_scored(trials),
            llm_calls=batch.calls,
            tokens=batch.tokens,
            elapsed_s=time.monotonic() - t0,
            summary={k: v for k, v in summary.as_dict().items() if k != "histogram"} if summary else {},
            study_calls=self._calls(trials, fulls) + batch.calls,
            study_tokens=self._spent(trials, fulls) + batch.tokens,
        )
        retrying(study.optuna.set_user_attr, f"{FULL_EVAL_ATTR}{len(fulls):03d}", fe.as_dict())
        bar.phase("")
        return True

    # ---- the token budget --------------------------------------------------------------

    def _spent(self, trials: list[FrozenTrial], fulls: list[FullEval]) -> int:
        return sum(int(t.user_attrs.get("mipro.tokens", 0)) for t in trials) + sum(f.tokens for f in fulls)

    def _calls(self, trials: list[FrozenTrial], fulls: list[FullEval]) -> int:
        return sum(int(t.user_attrs.get("mipro.llm_calls", 0)) for t in trials) + sum(f.llm_calls for f in fulls)

    def _per_example(self, trials: list[FrozenTrial], fulls: list[FullEval]) -> float | None:
        tokens = sum(int(t.user_attrs.get("mipro.tokens", 0)) for t in trials) + sum(f.tokens for f in fulls)
        n = sum(len(t.user_attrs.get("mipro.scores", [])) + int(t.user_attrs.get("mipro.errors", 0)) for t in trials)
        n += sum(f.n + f.errors for f in fulls)
        return tokens / n if n and tokens else None

    def _over_budget(self, trials: list[FrozenTrial], fulls: list[FullEval], *, full: bool) -> bool:
        if self.max_tokens_total is None:
            return False
        per = self._per_example(trials, fulls)
        if per is None:
            return False
        need = per * len(self.valset) * 1.1 if full else 0.0
        return self._spent(trials, fulls) + need > self.max_tokens_total

    def _affordable(self, trials: list[FrozenTrial], fulls: list[FullEval], k: int) -> int:
        """How many of the next ``k`` trials fit in the token budget (1 to calibrate)."""
        if self.max_tokens_total is None:
            return k
        costs = [int(t.user_attrs.get("mipro.tokens", 0)) for t in trials if t.state == TrialState.COMPLETE]
        if not costs:
            return 1 if self._spent(trials, fulls) < self.max_tokens_total else 0
        # keep room for the full evaluation that follows the round, or its trials are wasted
        per = self._per_example(trials, fulls) or 0.0
        left = self.max_tokens_total - self._spent(trials, fulls) - per * len(self.valset) * 1.1
        return max(0, min(k, int(left // (max(costs) * 1.1))))

    # ---- reading back ------------------------------------------------------------------

    def full_evals(self, study: Study) -> list[FullEval]:
        """Every full evaluation recorded on the study, oldest first."""
        attrs = retrying(study.storage.optuna.get_study_user_attrs, study._study_id)
        return [FullEval(**attrs[k]) for k in sorted(attrs) if k.startswith(FULL_EVAL_ATTR)]

    def _result(self, study: Study, stopped: str, elapsed: float) -> MiproResult:
        trials = _finished(study)
        fulls = self.full_evals(study)
        if fulls:
            best = max(fulls, key=lambda f: (f.score, -f.after_trials))
            params, score = dict(best.params), best.score
        else:
            means = _combo_means(trials)
            params = dict(max(means.items(), key=lambda kv: kv[1][0])[0]) if means else self.candidates.defaults()
            score = None
        ins, dem = self.candidates.chosen(params)
        from studyhall.storage._trials import read_study_samples

        samples = [float(x) for arr in read_study_samples(study.storage, study._study_id, "llm.latency_s").values() for x in arr]
        samples += self._latencies
        return MiproResult(
            best_params=params,
            best_instructions=ins,
            best_demos=dem,
            best_full_score=score,
            full_evals=fulls,
            llm_calls=self._calls(trials, fulls),
            tokens=self._spent(trials, fulls),
            study=study.name,
            trials=len(trials),
            completed=sum(t.state == TrialState.COMPLETE for t in trials),
            pruned=sum(t.state == TrialState.PRUNED for t in trials),
            failed=sum(t.state == TrialState.FAIL for t in trials),
            calls_saved=sum(int(t.user_attrs.get("mipro.calls_saved", 0)) for t in trials),
            stopped=stopped,
            elapsed_s=elapsed,
            latency=summarize(samples) if samples else None,
        )


def _finished(study: Study) -> list[FrozenTrial]:
    return study.trials(states=list(_FINISHED))


def _scored(trials: Sequence[FrozenTrial]) -> int:
    """Trials that scored a minibatch (complete or pruned): what ``n_trials`` counts."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _failing(trials: Sequence[FrozenTrial], n: int) -> bool:
    """Whether the last ``n`` finished trials (by number) all failed."""
    last = sorted(trials, key=lambda t: t.number)[-n:]
    return len(last) == n and all(t.state == TrialState.FAIL for t in last)


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in params.items()))


def _combo_means(trials: Sequence[FrozenTrial]) -> dict[tuple[tuple[str, int], ...], tuple[float, int, int]]:
    """Per combination: the mean over every example any of its trials scored, the count, the first trial."""
    pooled: dict[tuple[tuple[str, int], ...], tuple[list[float], int]] = {}
    for t in trials:
        scores = t.user_attrs.get("mipro.scores")
        if t.state == TrialState.FAIL or not scores or not t.params:
            continue
        key = _key(t.params)
        xs, first = pooled.setdefault(key, ([], t.number))
        xs.extend(float(s) for s in scores)
        pooled[key] = (xs, min(first, t.number))
    return {k: (sum(xs) / len(xs), len(xs), first) for k, (xs, first) in pooled.items()}


class _QuietWilcoxon(optuna.pruners.BasePruner):
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._inner.prune(study, trial)


def _state_counts(study: Study) -> tuple[dict[str, int], float | None]:
    """Trials per state and the best value, read with SQL (safe beside optimize's threads)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    t, v = models.TrialModel.__table__, models.TrialValueModel.__table__
    sid = study._study_id

    def read(conn: sa.Connection) -> tuple[dict[str, int], float | None]:
        rows = conn.execute(sa.select(t.c.state, sa.func.count()).where(t.c.study_id == sid).group_by(t.c.state))
        counts = {(s.name if hasattr(s, "name") else str(s)): int(c) for s, c in rows}
        best = conn.execute(
            sa.select(sa.func.max(v.c.value))
            .select_from(t.join(v, v.c.trial_id == t.c.trial_id))
            .where(t.c.study_id == sid, t.c.state == TrialState.COMPLETE)
        ).scalar()
        return counts, None if best is None else float(best)

    return study.storage.transaction(read)


class _LoopProgress:
    """A rich bar over the whole loop (trials done, best minibatch mean, phase); stderr only."""

    def __init__(self, enabled: bool, study: Study, total: int) -> None:
        import sys

        self._bar: Any = None
        if not enabled or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._study = study
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=Console(stderr=True),
        )
        self._task = self._bar.add_task(f"mipro {study.name}", total=total, detail="")
        self._phase = ""
        self._stop = threading.Event()
        self._bar.start()
        self._thread = threading.Thread(target=self._poll, name="mipro-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.update()

    def update(self) -> None:
        if self._bar is None:
            return
        try:
            counts, best = _state_counts(self._study)
        except Exception:  # a progress bar must never break the run
            return
        pruned, failed = counts.get("PRUNED", 0), counts.get("FAIL", 0)
        n = pruned + failed + counts.get("COMPLETE", 0)
        detail = f"best minibatch {best:.3f}" if best is not None else ""
        detail += f"  pruned {pruned}" if pruned else ""
        detail += f"  failed {failed}" if failed else ""
        detail += f"  [dim]{self._phase}[/]" if self._phase else ""
        self._bar.update(self._task, completed=n, detail=detail)

    def phase(self, text: str) -> None:
        if self._bar is not None:
            self._phase = text
            self.update()

    def close(self) -> None:
        if self._bar is not None:
            self._stop.set()
            self._thread.join()
            self._phase = ""
            self.update()
            self._bar.stop()
