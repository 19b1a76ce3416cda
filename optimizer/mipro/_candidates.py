"""The candidates MIPRO chooses among: instructions and few-shot demo sets per predictor.

A combination is one index per choice (``0_instruction``, ``0_demos``, ...): the
categorical space TPE samples. Duplicate candidates are dropped (with a warning):
they would split one candidate's trials between two indices. Also the seeded
pieces of a trial: which demo sets to build from labeled examples, which examples
a trial's minibatch holds (half of every minibatch is shared by all trials, so
that paired comparisons pair the same examples).
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from studyhall.optimizer.study._space import Categorical
from studyhall.storage import InvalidRequest

# Examples every minibatch shares at least (or all of a smaller one): the pruner's
# paired test needs this many in common with the best trial (see _evaluate.PRUNE_START).
SHARED_MIN = 15


class Candidates:
    """Instruction and demo-set candidates per predictor, and the categorical space over them."""

    def __init__(self, instructions: Any, demos: Any) -> None:
        self.instructions = [
            _unique(ins, f"instruction candidates of predictor {i}", _norm_text)
            for i, ins in enumerate(_per_predictor_instructions(instructions))
        ]
        n = len(self.instructions)
        self.demos = [
            _unique(sets, f"demo sets of predictor {i}", _norm_demos)
            for i, sets in enumerate(_per_predictor_demos(demos, n))
        ]
        self.single = n == 1 and (isinstance(instructions, Sequence) and all(isinstance(x, str) for x in instructions))

    @property
    def n_predictors(self) -> int:
        """How many predictors (instruction slots) the program has."""
        return len(self.instructions)

    def space(self) -> dict[str, Categorical]:
        """The categorical search space: an instruction index per predictor, a demo-set index where there is a choice."""
        sp: dict[str, Categorical] = {}
        for i, ins in enumerate(self.instructions):
            sp[f"{i}_instruction"] = Categorical(range(len(ins)))
            if len(self.demos[i]) > 1:  # a single demo set is no choice
                sp[f"{i}_demos"] = Categorical(range(len(self.demos[i])))
        return sp

    def defaults(self) -> dict[str, int]:
        """Candidate 0 everywhere: the program as it is."""
        return {name: 0 for name in self.space()}

    def suggest(self, trial: Any) -> dict[str, int]:
        """A combination suggested by ``trial`` (an Optuna-style trial)."""
        return {name: int(trial.suggest_categorical(name, list(c.choices))) for name, c in self.space().items()}

    def chosen(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """The instruction and demo set of each predictor for a combination."""
        ins = [self.instructions[i][int(params.get(f"{i}_instruction", 0))] for i in range(self.n_predictors)]
        dem = [
            list(self.demos[i][int(params.get(f"{i}_demos", 0))]) if self.demos[i] else []
            for i in range(self.n_predictors)
        ]
        return ins, dem

    def program_args(self, params: Mapping[str, Any]) -> tuple[Any, Any]:
        """What ``program`` receives: a str and a demo list (one predictor) or lists of them."""
        ins, dem = self.chosen(params)
        return (ins[0], dem[0]) if self.single else (ins, dem)

    def fingerprint(self) -> str:
        """A short hash of every candidate: a resumed study must have been run with the same ones."""
        blob = json.dumps([self.instructions, self.demos], sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _norm_text(text: Any) -> str:
    return " ".join(str(text).split()).casefold()


def _norm_demos(demos: Any) -> str:
    return json.dumps(demos, sort_keys=True, default=repr)


def _unique(items: list[Any], what: str, key: Any) -> list[Any]:
    """``items`` without repeats (first one kept, order kept); a warning names what was dropped."""
    seen: set[str] = set()
    out, dropped = [], []
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            dropped.append(i)
            continue
        seen.add(k)
        out.append(item)
    if dropped:
        warnings.warn(
            f"{what}: dropped {len(dropped)} duplicate(s) (indices {dropped}); the candidates are renumbered "
            "without them. Pass distinct candidates to silence this",
            UserWarning,
            stacklevel=4,
        )
    return out


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
    """The valset indices trial ``trial_number`` evaluates, in the order it evaluates them.

    The first half is the same for every trial of a study (a seeded draw, the
    "shared core"), the rest a seeded sample per trial. Trials thus share examples:
    the pruner's paired test compares two trials on the same examples from the start
    (scores are reported at the example's index), and combinations are compared on
    common ground; the per-trial half still spreads the search over the valset.
    The shared part is at least ``SHARED_MIN`` examples: the paired test needs that
    many in common with the best trial before it may prune.
    """
    size = min(size, n)
    order = random.Random(f"minibatch:{seed}").sample(range(n), n)
    core = min(size, max(size // 2, SHARED_MIN))
    rest = random.Random(f"minibatch:{seed}:{trial_number}").sample(order[core:], size - core)
    return order[:core] + rest
