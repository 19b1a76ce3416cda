"""``MiproLoop``: a MIPROv2-style search over instructions and few-shot demos (as in DSPy).

::

    run(n_trials) ── per round of `full_eval_every` trials ──────────────────────────────
    │  study.optimize(MinibatchObjective, workers=N, space={i_instruction, i_demos})
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

This module is the loop; beside it: ``_candidates.py`` (what is chosen),
``_evaluate.py`` (scoring a minibatch: the trial function and its pruner),
``_results.py`` (what a run found and what it cost) and ``_progress.py`` (the bar).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studyhall.bridge import recording
from studyhall.optimizer.mipro._candidates import Candidates, labeled_demo_sets
from studyhall.optimizer.mipro._evaluate import (
    MinibatchObjective,
    QuietWilcoxon,
    evaluate_batch,
    resolve_lm,
)
from studyhall.optimizer.mipro._progress import LoopProgress
from studyhall.optimizer.mipro._results import (
    FullEval,
    MiproResult,
    combo_key,
    combo_means,
    failing,
    finished_trials,
    llm_calls,
    scored,
    spent_tokens,
    tokens_per_example,
)
from studyhall.optimizer.study._study import Study
from studyhall.optimizer.study._summary import summarize
from studyhall.storage import InvalidRequest, Storage, retrying
from studyhall.storage._trials import read_study_samples

_log = logging.getLogger("studyhall.mipro")
FULL_EVAL_ATTR = "mipro:full_eval:"
CONFIG_ATTR = "mipro:config"


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
        self.candidates = Candidates(instructions, demos)
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
        return QuietWilcoxon(self.prune_p)

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
        objective = MinibatchObjective(
            self.program, self.metric, self.lm, self.valset, self.candidates, self.minibatch_size,
            self.seed, self.concurrency, self.max_errors, self.prune,
        )
        stopped = "n_trials"
        bar = LoopProgress(self.progress, study, n_trials)
        try:
            while True:
                trials = finished_trials(study)
                fulls = self.full_evals(study)
                last = max((f.after_trials for f in fulls), default=0)
                n = scored(trials)
                if n - last >= self.full_eval_every and not self._full_eval(study, trials, fulls, bar):
                    stopped = "max_tokens_total"
                    break
                if n >= n_trials:
                    break
                if failing(trials, max(2, self.full_eval_every)):
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
            trials = finished_trials(study)
            fulls = self.full_evals(study)
            last = max((f.after_trials for f in fulls), default=0)
            if scored(trials) > last and stopped != "failing":
                self._full_eval(study, trials, fulls, bar)
        finally:
            bar.close()
        return self._result(study, stopped, time.monotonic() - start)

    def _full_eval(self, study: Study, trials: list[FrozenTrial], fulls: list[FullEval], bar: LoopProgress) -> bool:
        """Score the best-mean combination not yet fully evaluated on the whole valset.

        Returns False when the budget forbids it; True otherwise (also when there is nothing to do).
        """
        if self._over_budget(trials, fulls, full=True):
            return False
        done = {combo_key(f.params) for f in fulls}
        means = combo_means(trials)
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
                self.program, self.metric, resolve_lm(self.lm), self.valset, range(len(self.valset)), instruction, demos,
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
            after_trials=scored(trials),
            llm_calls=batch.calls,
            tokens=batch.tokens,
            elapsed_s=time.monotonic() - t0,
            summary={k: v for k, v in summary.as_dict().items() if k != "histogram"} if summary else {},
            study_calls=llm_calls(trials, fulls) + batch.calls,
            study_tokens=spent_tokens(trials, fulls) + batch.tokens,
        )
        retrying(study.optuna.set_user_attr, f"{FULL_EVAL_ATTR}{len(fulls):03d}", fe.as_dict())
        bar.phase("")
        return True

    # ---- the token budget --------------------------------------------------------------

    def _over_budget(self, trials: list[FrozenTrial], fulls: list[FullEval], *, full: bool) -> bool:
        if self.max_tokens_total is None:
            return False
        per = tokens_per_example(trials, fulls)
        if per is None:
            return False
        need = per * len(self.valset) * 1.1 if full else 0.0
        return spent_tokens(trials, fulls) + need > self.max_tokens_total

    def _affordable(self, trials: list[FrozenTrial], fulls: list[FullEval], k: int) -> int:
        """How many of the next ``k`` trials fit in the token budget (1 to calibrate)."""
        if self.max_tokens_total is None:
            return k
        costs = [int(t.user_attrs.get("mipro.tokens", 0)) for t in trials if t.state == TrialState.COMPLETE]
        if not costs:
            return 1 if spent_tokens(trials, fulls) < self.max_tokens_total else 0
        # keep room for the full evaluation that follows the round, or its trials are wasted
        per = tokens_per_example(trials, fulls) or 0.0
        left = self.max_tokens_total - spent_tokens(trials, fulls) - per * len(self.valset) * 1.1
        return max(0, min(k, int(left // (max(costs) * 1.1))))

    # ---- reading back ------------------------------------------------------------------

    def full_evals(self, study: Study) -> list[FullEval]:
        """Every full evaluation recorded on the study, oldest first."""
        attrs = retrying(study.storage.optuna.get_study_user_attrs, study._study_id)
        return [FullEval(**attrs[k]) for k in sorted(attrs) if k.startswith(FULL_EVAL_ATTR)]

    def _result(self, study: Study, stopped: str, elapsed: float) -> MiproResult:
        trials = finished_trials(study)
        fulls = self.full_evals(study)
        if fulls:
            best = max(fulls, key=lambda f: (f.score, -f.after_trials))
            params, score = dict(best.params), best.score
        else:
            means = combo_means(trials)
            params = dict(max(means.items(), key=lambda kv: kv[1][0])[0]) if means else self.candidates.defaults()
            score = None
        ins, dem = self.candidates.chosen(params)
        samples = [float(x) for arr in read_study_samples(study.storage, study._study_id, "llm.latency_s").values() for x in arr]
        samples += self._latencies
        return MiproResult(
            best_params=params,
            best_instructions=ins,
            best_demos=dem,
            best_full_score=score,
            full_evals=fulls,
            llm_calls=llm_calls(trials, fulls),
            tokens=spent_tokens(trials, fulls),
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
