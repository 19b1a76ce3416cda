"""``MiproLoop``: a MIPROv2-style search over instructions and few-shot demos (as in DSPy).

::

    run(n_trials) ── per round of `full_eval_every` search trials ────────────────────────
    │  study.optimize(MinibatchObjective, workers=N, space={i_instruction, i_demos})
    │     TPE (multivariate, constant liar, start-up sized to the budget) picks a
    │     combination in the parent; pool worker: a minibatch of valset (a core shared
    │     by every trial, then a seeded sample) ──> program(ex, instruction, demos, lm)
    │                  x concurrency threads, LLM calls under the shared RateLimiter
    │                  ──> metric ──> per-example scores  (trial.report at the example's
    │                  index + should_prune with WilcoxonPruner when prune=True)
    │     trial: COMPLETE(value = minibatch mean, distribution kept) | PRUNED(mean so far) | FAIL
    ├─ callbacks(event "trial") for each trial the round finished
    ├─ a full evaluation only where it can change the answer (_policy.py): the first,
    │  at the end of the search, goes to the best minibatch mean; later ones only to a combination whose paired
    │  upper confidence bound beats the incumbent's full score, scored in chunks and
    │  dropped once it cannot win; examples its trials already scored are reused
    │  ──> study user attr "mipro:full_eval:NNN" ──> callbacks
    ├─ token budget checked before each round and each full evaluation
    └─ at the end: full evaluations until no combination can beat the incumbent;
       _settle() picks the answer (the best full score) ──> study.select(...): the
       study's selection, shown by the CLI, the report and optuna-dashboard

What TPE sees, and what it does not: every minibatch trial is an ordinary trial
whose value is its minibatch mean; a pruned trial is PRUNED with its mean so far
(TPE ranks it below the completed ones); a trial with more than ``max_errors``
failed examples is FAIL (TPE ignores it) instead of DSPy's low score from errors
counted as 0 (stanfordnlp/dspy#1405). Full evaluations are NOT trials: DSPy adds
them to the study as extra trials, so TPE mixes whole-valset means with noisier
minibatch means of the same parameters. Here they are study user attributes (one
per evaluation, ``mipro:full_eval:000`` ...), read back on resume, and only pick the
final answer.

The study, its trials and the full evaluations live in the storage, so running the
same loop again with the same study name resumes where it stopped; trials of
a killed run are failed as stale and retried by the study's retry policy.

This module is the loop; beside it: ``_candidates.py`` (what is chosen),
``_evaluate.py`` (scoring a minibatch: the trial function and its pruner),
``_policy.py`` (which combination deserves a full evaluation), ``_results.py``
(what a run found and what it cost), ``_auto.py`` (budgets from the data size),
``_propose.py`` and ``_bootstrap.py`` (making candidates) and ``_progress.py`` (the bar).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studyhall.bridge import recording
from studyhall.optimizer import _otel
from studyhall.optimizer.mipro._candidates import Candidates, labeled_demo_sets
from studyhall.optimizer.mipro._evaluate import (
    MinibatchObjective,
    QuietWilcoxon,
    evaluate_batch,
    resolve_lm,
)
from studyhall.optimizer.mipro._policy import MARGIN, Pick, incumbent, pick_full_eval, race_bound
from studyhall.optimizer.mipro._progress import LoopProgress
from studyhall.optimizer.mipro._results import (
    FullEval,
    MiproResult,
    combo_key,
    combo_means,
    combo_scores,
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

if TYPE_CHECKING:
    from studyhall.optimizer.mipro._auto import Budget, Mode

_log = logging.getLogger("studyhall.mipro")
FULL_EVAL_ATTR = "mipro:full_eval:"
CONFIG_ATTR = "mipro:config"
BASELINE_ATTR = "mipro:baseline"  # set on studies whose first trial is the default program (not a search trial)
DEFAULT_Z = 1.0  # one-sided 84%: the optimism a combination gets before it earns a full evaluation


@dataclass(frozen=True)
class MiproEvent:
    """What a ``callbacks=`` function receives: a finished trial, or a full evaluation.

    ``kind`` is ``"trial"`` (``trial`` set) or ``"full_eval"`` (``full_eval`` set);
    ``best`` is the best full evaluation so far, ``llm_calls`` the study's calls so far.
    """

    kind: str
    study: Study
    trial: FrozenTrial | None
    full_eval: FullEval | None
    best: FullEval | None
    llm_calls: int


class MiproLoop:
    """MIPROv2-style optimization of instructions and few-shot demos, trials in parallel.

    Args:
        program: ``program(example, instruction, demos, lm) -> prediction``; with one
            predictor ``instruction`` is a str and ``demos`` the chosen demo set, with
            several both are lists indexed by predictor.
        metric: ``metric(example, prediction) -> float``.
        instructions: instruction candidates: a list of str (one predictor) or one
            list per predictor; candidate 0 is the program's default. Duplicates are
            dropped with a warning.
        demos: demo-set candidates (each a list of examples) for one predictor, or one
            list of them per predictor; set 0 is the default. None: built from
            ``trainset`` by :func:`labeled_demo_sets`, or no demos without one.
        valset: the examples scored (minibatches of it, and all of it for full evals);
            defaults to ``trainset``.
        lm: an LLM client (``bridge.LLMClient``) or the name of a registered service.
        minibatch_size: examples per trial (DSPy's default, 35).
        full_eval_every: search trials between the points where a full evaluation is considered.
        workers: trials in flight at once, each in a pool worker (0: this thread).
        concurrency: LLM calls in flight per trial (under the client's rate limiter).
            At most ``max(1, workers) * concurrency`` calls are in flight at any time:
            trials run ``workers`` at a time, and a full evaluation (between rounds of
            trials, never beside them) uses that same number of threads.
        max_errors: failed examples a trial tolerates (default 10% of a minibatch);
            past it the trial is FAIL, never a low score.
        prune: stop clearly worse trials early with Optuna's WilcoxonPruner.
        max_tokens_total: stop before starting trials (or a full evaluation) whose
            estimated tokens, from the trials so far, would exceed this budget.
        full_eval_z: the standard errors of optimism in the paired bound that decides
            whether a combination may beat the best full score (larger: more full evaluations).
        callbacks: functions called in this process with a :class:`MiproEvent` after each
            trial (as its round of trials ends, in trial order) and after each full
            evaluation; one may call :meth:`stop`.
        artifacts: a folder where, at the end of :meth:`run`, the study report's figure is
            stored as an Optuna artifact for optuna-dashboard (default ``$STUDYHALL_ARTIFACTS``).
        n_trials: the default for :meth:`run` (set by :meth:`auto`).

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
        full_eval_z: float = DEFAULT_Z,
        callbacks: Sequence[Callable[[MiproEvent], Any]] = (),
        n_trials: int = 30,
        artifacts: str | Path | None = None,
    ) -> None:
        if not callable(program) or not callable(metric):
            raise InvalidRequest(
                "program and metric must be callables: program(example, instruction, demos, lm), metric(example, prediction)"
            )
        data = valset if valset is not None else trainset
        if data is None or len(data) == 0:
            raise InvalidRequest("MiproLoop needs a non-empty valset (or trainset) to score candidates on")
        int_args = (
            ("minibatch_size", minibatch_size, 1),
            ("full_eval_every", full_eval_every, 1),
            ("concurrency", concurrency, 1),
            ("workers", workers, 0),
            ("retries", retries, 0),
        )
        for name, v, low in int_args:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidRequest(f"{name} must be an integer >= {low}; got {v!r}")
        _check_n_trials(n_trials)
        if max_tokens_total is not None and (not isinstance(max_tokens_total, int) or max_tokens_total < 1):
            raise InvalidRequest(f"max_tokens_total must be a positive integer (or None); got {max_tokens_total!r}")
        if not 0.0 < prune_p < 1.0:
            raise InvalidRequest(f"prune_p is a p-value threshold in (0, 1); got {prune_p!r}")
        if not isinstance(full_eval_z, (int, float)) or full_eval_z < 0:
            raise InvalidRequest(
                f"full_eval_z must be a number >= 0 (standard errors of optimism); got {full_eval_z!r}"
            )
        if any(not callable(cb) for cb in callbacks):
            raise InvalidRequest("callbacks must be callables taking a MiproEvent")
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
        self.full_eval_z, self.callbacks, self.n_trials = float(full_eval_z), list(callbacks), n_trials
        self.artifacts = artifacts
        self.budget: Budget | None = None  # what auto() chose, if it made this loop
        self._latencies: list[float] = []
        self._stop = False

    @classmethod
    def auto(cls, mode: Mode, program: Callable[..., Any], metric: Callable[..., Any], **kwargs: Any) -> MiproLoop:
        """A loop whose candidates and budget are chosen for you, as DSPy's ``auto=`` does.

        ``mode`` is ``"light"``, ``"medium"`` or ``"heavy"``; proposes instructions
        (:func:`propose_instructions`) and bootstraps demo sets (:func:`bootstrap_demos`),
        or reads them back from the study when it resumes. The keyword arguments are
        :func:`studyhall.optimizer.mipro._auto.auto_loop`'s (``trainset``, ``lm``,
        ``instruction`` ... and any ``MiproLoop`` argument to override).
        """
        from studyhall.optimizer.mipro._auto import auto_loop

        return auto_loop(mode, program, metric, **kwargs)

    @property
    def max_in_flight(self) -> int:
        """The most LLM calls this loop has in flight at once: ``max(1, workers) * concurrency``."""
        return max(1, self.workers) * self.concurrency

    def stop(self) -> None:
        """Ask the loop to stop after the current round (from a callback); ``stopped == "callback"``."""
        self._stop = True

    # ---- set-up ------------------------------------------------------------------------

    def _pruner(self) -> optuna.pruners.BasePruner | None:
        if not self.prune:
            return None
        return QuietWilcoxon(self.prune_p)

    def _sampler(self, n_trials: int) -> str | optuna.samplers.BaseSampler:
        """The given sampler, or multivariate TPE whose random start-up fits the budget.

        Optuna's default start-up is 10 random trials, so a 10-trial search would be
        random search under another name; here it is a third of the trials (2 to 10).
        """
        if self.sampler is not None:
            return self.sampler
        return optuna.samplers.TPESampler(
            multivariate=True, constant_liar=True, seed=self.seed, n_startup_trials=startup_trials(n_trials)
        )

    def open_study(self, n_trials: int | None = None) -> Study:
        """Create the study, or load it to resume (it must have been run with the same candidates)."""
        from studyhall.optimizer.study._orchestrator import Orchestrator

        orch = Orchestrator(self.storage)
        fresh = self.study_name not in orch.study_names()
        study = orch.create_study(
            self.study_name,
            direction="maximize",
            sampler=self._sampler(n_trials or self.n_trials),
            seed=self.seed,
            pruner=self._pruner(),
            load_if_exists=True,
        )
        config = {
            "candidates": self.candidates.fingerprint(),
            "valset": len(self.valset),
            "minibatch_size": self.minibatch_size,
            "seed": self.seed,
        }
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
            retrying(study.optuna.set_user_attr, BASELINE_ATTR, True)
        return study

    # ---- the run -----------------------------------------------------------------------

    def run(self, n_trials: int | None = None) -> MiproResult:
        """Run until the study has ``n_trials`` scored (complete or pruned) search trials.

        The default program's trial (the baseline, the first trial of a fresh study)
        is not a search trial: a fresh run scores ``n_trials + 1`` minibatches. Failed
        trials (too many LLM errors, a crash, a dead process) do not count, so their
        retries and replacements run; ``stopped == "failing"`` when the last trials
        all failed. The count is the study's, so a second run resumes. Returns the
        best combination by full-valset score with the whole study's cost.
        """
        n_trials = self.n_trials if n_trials is None else n_trials
        _check_n_trials(n_trials)
        start = time.monotonic()
        self._stop = False
        study = self.open_study(n_trials)
        base = 1 if study.optuna.user_attrs.get(BASELINE_ATTR) else 0
        need = n_trials + base
        objective = MinibatchObjective(
            self.program,
            self.metric,
            self.lm,
            self.valset,
            self.candidates,
            self.minibatch_size,
            self.seed,
            self.concurrency,
            self.max_errors,
            self.prune,
        )
        seen = {t.number for t in finished_trials(study)}
        stopped, skipped = "n_trials", 0
        bar = LoopProgress(self.progress, study, need)
        try:
            while True:
                trials = finished_trials(study)
                n = scored(trials)
                if n >= need:
                    break
                if failing(trials, max(2, self.full_eval_every)):
                    stopped = "failing"
                    _log.warning("the last trials all failed; stopping (their 'error' attribute says why)")
                    break
                # rounds end where the search trials reach a multiple of full_eval_every
                k = min(
                    self.full_eval_every - (n - base) % self.full_eval_every
                    if n >= base
                    else self.full_eval_every + base - n,
                    need - n,
                )
                k = self._affordable(trials, self.full_evals(study), k)
                if k < 1:
                    stopped = "max_tokens_total"
                    break
                study.optimize(
                    objective,
                    n_trials=k,
                    workers=min(self.workers, k),
                    trial_timeout=self.trial_timeout,
                    retries=self.retries,
                    space=self.candidates.space(),
                    progress=False,
                    artifacts=False,
                )
                bar.update()
                self._notify_trials(study, seen)
                if self._stop:
                    stopped = "callback"
                    break
                done = self._consider_full_eval(study, bar, final=False)
                if done is None:
                    stopped = "max_tokens_total"
                    break
                skipped += not done
                if self._stop:
                    stopped = "callback"
                    break
            if stopped not in ("failing", "callback"):
                # the last full evaluations (the budget kept room for the first): until no
                # combination could beat the incumbent
                while True:
                    done = self._consider_full_eval(study, bar, final=True)
                    if not done or self._stop:
                        stopped = "max_tokens_total" if done is None else stopped
                        break
        finally:
            bar.close()
        result = self._result(study, stopped, time.monotonic() - start, skipped)
        from studyhall.optimizer.telemetry._artifacts import attach_if_configured

        attach_if_configured(study, self.artifacts)  # after _result: the figure shows the selection
        return result

    def _notify_trials(self, study: Study, seen: set[int]) -> None:
        """Call the callbacks for each trial finished since the last call, in trial order."""
        if not self.callbacks:
            return
        trials = finished_trials(study)
        fulls = self.full_evals(study)
        for t in sorted(trials, key=lambda t: t.number):
            if t.number in seen:
                continue
            seen.add(t.number)
            event = MiproEvent("trial", study, t, None, incumbent(fulls), llm_calls(trials, fulls))
            for cb in self.callbacks:
                cb(event)

    def _consider_full_eval(self, study: Study, bar: LoopProgress, *, final: bool) -> bool | None:
        """Run a full evaluation if one could change the answer.

        Returns True if it ran one, False if none was worth it (or none is due yet),
        None if the token budget forbids the one that was.
        """
        trials = finished_trials(study)
        fulls = self.full_evals(study)
        if incumbent(fulls) is None and not final:
            # The first full evaluation waits for the end of the search: it is not fed to
            # TPE, so an earlier one would pay for an incumbent the search may still beat.
            return False
        pick = pick_full_eval(combo_scores(trials), fulls, self.full_eval_z)
        if pick is None:
            return False
        return self._full_eval(study, trials, fulls, bar, pick)

    def _full_eval(
        self, study: Study, trials: list[FrozenTrial], fulls: list[FullEval], bar: LoopProgress, pick: Pick
    ) -> bool | None:
        """Score ``pick`` on the whole valset, reusing the examples its trials scored; None if over budget.

        A challenger of the incumbent races it: scored in chunks of ``max_in_flight``
        examples, and dropped as soon as its paired bound on the final full-score gain
        (``race_bound``) says it cannot win by MARGIN.
        """
        known = combo_scores(trials).get(pick.key, ({}, 0))[0]
        todo = [i for i in range(len(self.valset)) if i not in known]
        if self._over_budget(trials, fulls, len(todo), _per_example(trials, pick.key)):
            return None
        params = dict(pick.key)
        instruction, demos = self.candidates.program_args(params)
        inc = incumbent(fulls)
        chunk = len(todo) if inc is None else max(10, self.max_in_flight)
        bar.phase(f"full eval of {params}")
        t0 = time.monotonic()
        per: list[float | None] = [known.get(i) for i in range(len(self.valset))]
        calls = tokens = 0
        complete = True
        for at in range(0, len(todo), max(1, chunk)):
            part = todo[at : at + chunk]
            with (
                recording(_otel.recorder()),
                _otel.span(
                    "studyhall.full_eval",
                    {"studyhall.study": study.name, **{f"studyhall.param.{k}": v for k, v in params.items()}},
                ),
            ):
                batch = evaluate_batch(
                    self.program,
                    self.metric,
                    resolve_lm(self.lm),
                    self.valset,
                    part,
                    instruction,
                    demos,
                    concurrency=self.max_in_flight,
                )
            self._latencies.extend(batch.latencies)
            calls, tokens = calls + batch.calls, tokens + batch.tokens
            for pos, score in batch.scores.items():
                per[batch.indices[pos]] = score
            if inc is not None and at + chunk < len(todo):
                got = {i: x for i, x in enumerate(per) if x is not None}
                g = race_bound(got, inc, self.full_eval_z, len(self.valset))
                if g is not None and g[1] <= MARGIN:
                    complete = False  # it can no longer beat the incumbent: stop paying for it
                    break
        scores = [x for x in per if x is not None]
        summary = summarize(scores) if scores else None
        fe = FullEval(
            params=params,
            score=float(summary.mean) if summary else 0.0,
            n=len(scores),
            errors=(len(self.valset) - len(scores)) if complete else 0,
            minibatch_mean=pick.minibatch_mean,
            after_trials=scored(trials),
            llm_calls=calls,
            tokens=tokens,
            elapsed_s=time.monotonic() - t0,
            summary={k: v for k, v in summary.as_dict().items() if k != "histogram"} if summary else {},
            study_calls=llm_calls(trials, fulls) + calls,
            study_tokens=spent_tokens(trials, fulls) + tokens,
            scores=per,
            reused=len(self.valset) - len(todo),
            reason=pick.reason,
            complete=complete,
        )
        retrying(study.optuna.set_user_attr, f"{FULL_EVAL_ATTR}{len(fulls):03d}", fe.as_dict())
        bar.phase("")
        if self.callbacks:
            event = MiproEvent("full_eval", study, None, fe, incumbent([*fulls, fe]), fe.study_calls)
            for cb in self.callbacks:
                cb(event)
        return True

    # ---- the token budget --------------------------------------------------------------

    def _over_budget(self, trials: list[FrozenTrial], fulls: list[FullEval], examples: int, per: float | None) -> bool:
        if self.max_tokens_total is None:
            return False
        per = per or tokens_per_example(trials, fulls)
        if per is None:
            return False
        return spent_tokens(trials, fulls) + per * examples * 1.1 > self.max_tokens_total

    def _affordable(self, trials: list[FrozenTrial], fulls: list[FullEval], k: int) -> int:
        """How many of the next ``k`` trials fit in the token budget (1 to calibrate)."""
        if self.max_tokens_total is None:
            return k
        costs = [int(t.user_attrs.get("mipro.tokens", 0)) for t in trials if t.state == TrialState.COMPLETE]
        if not costs:
            return 1 if spent_tokens(trials, fulls) < self.max_tokens_total else 0
        # keep room for a full evaluation after the round, or its trials are wasted
        # the dearest prompt seen, with room for a dearer one not seen yet (a longer demo set)
        per = 1.5 * max((_per_example([t]) or 0.0 for t in trials), default=0.0)
        left = self.max_tokens_total - spent_tokens(trials, fulls) - per * (len(self.valset) - self.minibatch_size)
        return max(0, min(k, int(left // (max(costs) * 1.5))))

    # ---- reading back ------------------------------------------------------------------

    def full_evals(self, study: Study) -> list[FullEval]:
        """Every full evaluation recorded on the study, oldest first."""
        attrs = retrying(study.storage.optuna.get_study_user_attrs, study._study_id)
        return [FullEval(**attrs[k]) for k in sorted(attrs) if k.startswith(FULL_EVAL_ATTR)]

    def _settle(
        self, study: Study, trials: list[FrozenTrial], fulls: list[FullEval]
    ) -> tuple[dict[str, int], float | None]:
        """The loop's answer: the combination with the best full score (earliest on ties).

        Recorded as the study's selection (``study.select``: params, full-valset score
        with its interval, n, a trial of the combination), which the CLI, the report
        and optuna-dashboard show. Without any full evaluation, the best minibatch mean
        (``best_full_score`` None, nothing selected). This is the one place the loop
        chooses; everything it returns follows from it.
        """
        best = incumbent(fulls)
        if best is not None:
            scores = [x for x in best.scores if x is not None]
            if scores:
                first = combo_scores(trials).get(combo_key(best.params))
                study.select(
                    best.params,
                    scores=scores,
                    trial=first[1] if first else None,
                    source="full evaluation",
                    full_eval=next(i for i, f in enumerate(fulls) if f is best),
                )
            return dict(best.params), best.score
        means = combo_means(trials)
        if not means:
            return self.candidates.defaults(), None
        key = max(means.items(), key=lambda kv: (kv[1][0], -kv[1][2]))[0]
        return dict(key), None

    def _result(self, study: Study, stopped: str, elapsed: float, skipped: int = 0) -> MiproResult:
        trials = finished_trials(study)
        fulls = self.full_evals(study)
        params, score = self._settle(study, trials, fulls)
        ins, dem = self.candidates.chosen(params)
        samples = [
            float(x)
            for arr in read_study_samples(study.storage, study._study_id, "llm.latency_s").values()
            for x in arr
        ]
        samples += self._latencies
        from studyhall.optimizer.mipro._auto import setup_cost

        setup_calls, setup_tokens = setup_cost(study)
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
            full_evals_skipped=skipped,
            setup_calls=setup_calls,
            setup_tokens=setup_tokens,
        )


def _per_example(trials: Sequence[FrozenTrial], key: Any = None) -> float | None:
    """Tokens per example of the trials (of combination ``key`` only, if given); None without any."""
    n = tokens = 0
    for t in trials:
        if key is not None and (not t.params or combo_key(t.params) != key):
            continue
        n += len(t.user_attrs.get("mipro.scores", [])) + int(t.user_attrs.get("mipro.errors", 0))
        tokens += int(t.user_attrs.get("mipro.tokens", 0))
    return tokens / n if n and tokens else None


def startup_trials(n_trials: int) -> int:
    """TPE's random start-up for a search of ``n_trials``: a third of it, 2 to 10 trials."""
    return max(2, min(10, n_trials // 3))


def _check_n_trials(n_trials: Any) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise InvalidRequest(f"n_trials must be an integer >= 1; got {n_trials!r}")
