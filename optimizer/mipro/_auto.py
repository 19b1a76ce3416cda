"""``MiproLoop.auto``: candidates and budgets chosen from the data size, as DSPy's ``auto=`` does.

::

    auto_loop(mode, program, metric, trainset, lm, instruction)
      valset: given, or the last 80% of trainset (as DSPy); capped at the mode's size
      the study already has candidates (a resumed run)? ──> read them back, no calls
      else: propose_instructions(n = proposals)   ~ proposals + 1 calls
            bootstrap_demos(sets, k)               ~ (k + sets) / accuracy calls
            ──> study user attr "mipro:candidates" (and what they cost)
      MiproLoop(instructions, demos, n_trials, minibatch_size, full_eval_every, prune=True)

Where DSPy's light mode spends most of its calls (a full evaluation of the default
program, minibatches of 35, a full evaluation every 5 trials, three calls per
proposed instruction) this spends them where they change the answer: more
instruction candidates (a proposal is one call), smaller minibatches that share a
core (paired comparisons need fewer examples), pruning, and full evaluations only
for a combination that could beat the incumbent.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from studyhall.optimizer.mipro._bootstrap import as_demo, bootstrap_demos
from studyhall.optimizer.mipro._evaluate import _CountingLM, resolve_lm
from studyhall.optimizer.mipro._propose import propose_instructions
from studyhall.storage import InvalidRequest, retrying

if TYPE_CHECKING:
    from studyhall.optimizer.mipro._loop import MiproLoop

Mode = Literal["light", "medium", "heavy"]
CANDIDATES_ATTR = "mipro:candidates"


@dataclass(frozen=True)
class Budget:
    """What an ``auto`` mode spends: candidates to make, trials, minibatch size, full-evaluation policy, valset size."""

    proposals: int
    demo_sets: int
    demos_per_set: int
    n_trials: int
    minibatch_size: int
    full_eval_every: int
    val_size: int

    def as_dict(self) -> dict[str, int]:
        """Plain data (what the docs' table shows)."""
        return asdict(self)


_MODES: dict[str, tuple[int, int, int, int]] = {
    # proposals, bootstrapped demo sets, minibatch size, valset cap
    "light": (8, 3, 15, 100),
    "medium": (12, 6, 25, 300),
    "heavy": (18, 9, 35, 1000),
}


_DSPY_N = {"light": 6, "medium": 12, "heavy": 18}  # DSPy's AUTO_RUN_SETTINGS[mode]["n"]


def budget(mode: Mode, n_valset: int, n_predictors: int = 1) -> Budget:
    """The budget of ``mode`` for a valset of ``n_valset`` examples and ``n_predictors`` predictors.

    Trials follow DSPy's rule, ``max(2 * variables * log2(N), 1.5 * N)`` with DSPy's N for
    the mode (6, 12, 18), so the search has as many trials as DSPy's; each is cheaper.
    """
    if mode not in _MODES:
        raise InvalidRequest(f"auto mode must be 'light', 'medium' or 'heavy'; got {mode!r}")
    proposals, sets, mb, cap = _MODES[mode]
    n = _DSPY_N[mode]
    variables = 2 * n_predictors
    trials = int(max(2 * variables * math.log2(n), 1.5 * n))
    val = min(cap, n_valset)
    return Budget(proposals, sets, 4, trials, min(mb, val), 4, val)


def auto_loop(
    mode: Mode,
    program: Callable[..., Any],
    metric: Callable[..., Any],
    *,
    trainset: Sequence[Any],
    lm: Any,
    instruction: str | Sequence[str] = "",
    valset: Sequence[Any] | None = None,
    program_description: str = "",
    prompt_lm: Any = None,
    study: str = "mipro",
    storage: Any = None,
    seed: int = 0,
    demo: Callable[[Any, Any], Any] = as_demo,
    show: Callable[[Any], str] | None = None,
    bootstrap_program: Callable[..., Any] | None = None,
    **overrides: Any,
) -> MiproLoop:
    """A :class:`MiproLoop` with proposed instructions, bootstrapped demos and a budget for ``mode``.

    Args:
        mode: ``"light"``, ``"medium"`` or ``"heavy"`` (see :func:`budget`).
        program, metric: as for ``MiproLoop``.
        trainset: proposals and demos come from it (and the valset too, when not given).
        lm: the task model (an ``LLMClient`` or a service name).
        instruction: the program's current instruction (one str, or one per predictor): candidate 0.
        valset: the examples scored; default the last 80% of ``trainset``.
        program_description: what the program does, for the proposer.
        prompt_lm: the model that proposes (default ``lm``).
        study, storage, seed: as for ``MiproLoop``; a study that already holds candidates reuses them.
        demo: how a right answer becomes a demo (see :func:`bootstrap_demos`).
        show: how an example is shown to the proposer.
        bootstrap_program: the program bootstrapping runs (default ``program``), e.g. one that also
            returns its trace for ``demo``.
        overrides: any other ``MiproLoop`` argument (``workers``, ``n_trials``, ``minibatch_size`` ...).
    """
    from studyhall.optimizer.mipro._loop import MiproLoop
    from studyhall.optimizer.study._orchestrator import Orchestrator

    train = list(trainset)
    if not train:
        raise InvalidRequest("MiproLoop.auto needs a non-empty trainset")
    if valset is None:
        if len(train) < 5:
            raise InvalidRequest(
                "MiproLoop.auto without a valset splits the trainset (20% / 80%); give it 5 examples or more"
            )
        cut = len(train) - max(1, int(len(train) * 0.8))
        train, val = train[:cut], train[cut:]
    else:
        val = list(valset)
    basics = [instruction] if isinstance(instruction, str) else list(instruction)
    b = budget(mode, len(val), len(basics))
    if len(val) > b.val_size:
        val = random.Random(f"auto-val:{seed}").sample(val, b.val_size)
    saved = _saved_candidates(Orchestrator(storage), study)
    if saved is not None:
        instructions, demos, setup = saved["instructions"], saved["demos"], saved.get("setup", {})
    else:
        counting = _CountingLM(resolve_lm(prompt_lm if prompt_lm is not None else lm))
        from studyhall.optimizer.mipro._propose import show_example

        instructions = []
        for i, basic in enumerate(basics):
            what = program_description + (f" (step {i + 1} of {len(basics)})" if len(basics) > 1 else "")
            proposed = propose_instructions(
                counting,
                train,
                b.proposals,
                program_description=what,
                basic_instruction=basic,
                seed=seed + i,
                show=show or show_example,
            )
            instructions.append([basic, *proposed])
        task_lm = counting if prompt_lm is None else _CountingLM(resolve_lm(lm))
        demos = bootstrap_demos(
            bootstrap_program or program,
            metric,
            train,
            lm=task_lm,
            instruction=basics[0] if len(basics) == 1 else basics,
            sets=b.demo_sets,
            k=b.demos_per_set,
            seed=seed,
            demo=demo,
        )
        calls = counting.calls + (task_lm.calls if task_lm is not counting else 0)
        tokens = counting.tokens + (task_lm.tokens if task_lm is not counting else 0)
        setup = {"llm_calls": calls, "tokens": tokens}
    opts: dict[str, Any] = dict(
        valset=val,
        lm=lm,
        study=study,
        storage=storage,
        seed=seed,
        n_trials=b.n_trials,
        minibatch_size=b.minibatch_size,
        full_eval_every=b.full_eval_every,
        prune=True,
    )
    opts.update(overrides)
    loop = MiproLoop(
        program, metric, instructions=instructions if len(basics) > 1 else instructions[0], demos=demos, **opts
    )
    loop.budget = b
    if saved is None:
        st = loop.open_study()
        record = {"instructions": instructions, "demos": demos, "setup": setup, "budget": b.as_dict(), "mode": mode}
        try:
            json.dumps(record)
        except TypeError as exc:
            raise InvalidRequest(
                f"the candidates must be JSON data to be kept in the study for a resume ({exc}); "
                "make demo() return plain dicts"
            ) from exc
        retrying(st.optuna.set_user_attr, CANDIDATES_ATTR, record)
    return loop


def _saved_candidates(orch: Any, study: str) -> dict[str, Any] | None:
    if study not in orch.study_names():
        return None
    saved = orch.load_study(study).optuna.user_attrs.get(CANDIDATES_ATTR)
    return saved if isinstance(saved, dict) else None


def setup_cost(study: Any) -> tuple[int, int]:
    """LLM calls and tokens spent making a study's candidates (0, 0 if it was given them)."""
    saved = study.optuna.user_attrs.get(CANDIDATES_ATTR)
    setup = saved.get("setup", {}) if isinstance(saved, dict) else {}
    return int(setup.get("llm_calls", 0)), int(setup.get("tokens", 0))
