"""The built-in simulated task behind ``studyhall demo``: word problems and a fake model.

::

    arith.jsonl (160 problems, gold answers) ──> SimTask(trainset, valset, candidates)
    solve(example, instruction, demos, lm) ──> lm.chat([system=instruction,
                                                       user=demos + question])
        FakeProvider ──> SimResponder(messages, model): finds the question, answers
                         correctly with a probability set by the prompt ──> "Answer: 42"
    exact_match(example, prediction) ──> 1.0 or 0.0

The simulated model reads the prompt like a real one would be affected by it: an
instruction to work step by step, a fixed answer format, a request to double-check,
and few-shot demos with worked reasoning all raise its chance of a right answer;
haste lowers it, harder (multi-step) problems lower it, and too many demos distract
it. Whether a given prompt is answered right is a deterministic coin (a hash of seed,
model and prompt), so a run is reproducible and a prompt scores the same every time.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from studyhall.storage import InvalidRequest

Example = dict[str, Any]
Messages = list[dict[str, str]]

INSTRUCTIONS: tuple[str, ...] = (
    "Answer the question.",
    "You are a helpful assistant. Answer the user's question.",
    "Solve the arithmetic word problem. End with a line 'Answer: <number>'.",
    "Solve the arithmetic word problem step by step, then end with a line 'Answer: <number>'.",
    "Think step by step about the problem and double-check each calculation. End with 'Answer: <number>'.",
    "Give the answer as quickly as possible; just guess a number if unsure.",
    "Solve the problem step by step.",
    "Be very brief. Reply with one number.",
)
"""Instruction candidates for the simulated task; 0 is the program's default."""

_WORDS = (  # noqa: SIM905 - twenty-one words read better as text than as a list of literals
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()


@lru_cache(maxsize=1)
def load_problems() -> tuple[Example, ...]:
    """The shipped arithmetic word problems: id, question, answer, difficulty (1-3), reasoning."""
    text = resources.files("studyhall.optimizer.mipro").joinpath("data/arith.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def _by_question() -> dict[str, Example]:
    return {p["question"]: p for p in load_problems()}


def demo_candidates(trainset: Sequence[Example], seed: int = 0) -> list[list[Example]]:
    """Six few-shot demo sets drawn from ``trainset``; set 0 is zero-shot (the default).

    Sets 1-2 show bare answers, 3-5 worked reasoning; set 5 has 8 demos, more than
    helps (long prompts distract the simulated model and cost tokens).
    """
    need = 8
    if len(trainset) < need:
        raise InvalidRequest(f"demo_candidates needs at least {need} training examples; got {len(trainset)}")
    rng = random.Random(f"demos:{seed}")
    plan = [(0, False), (2, False), (4, False), (2, True), (4, True), (8, True)]
    sets: list[list[Example]] = []
    for k, worked in plan:
        picked = rng.sample(list(trainset), k)
        sets.append([dict(ex) if worked else {k2: v for k2, v in ex.items() if k2 != "reasoning"} for ex in picked])
    return sets


@dataclass(frozen=True)
class SimTask:
    """The simulated prompt-optimization task: data, candidates, program and metric."""

    trainset: list[Example]
    valset: list[Example]
    instructions: list[str]
    demos: list[list[Example]]
    seed: int = 0
    program: Any = field(default=None, repr=False)
    metric: Any = field(default=None, repr=False)

    def responder(self) -> SimResponder:
        """The FakeProvider responder that plays the model for this task (and proposes instructions)."""
        from studyhall.optimizer.mipro._simmodel import SimModel

        return SimModel(seed=self.seed)


def arith_task(n_train: int = 40, n_val: int = 100, seed: int = 0) -> SimTask:
    """Split the shipped problems into train (demo source) and validation sets.

    Example:
        >>> task = arith_task(n_val=20)
        >>> len(task.valset), len(task.instructions), len(task.demos)
        (20, 8, 6)
    """
    problems = list(load_problems())
    if n_train < 8 or n_val < 1 or n_train + n_val > len(problems):
        raise InvalidRequest(
            f"arith_task needs n_train >= 8, n_val >= 1 and n_train + n_val <= {len(problems)}; "
            f"got n_train={n_train}, n_val={n_val}"
        )
    rng = random.Random(f"split:{seed}")
    rng.shuffle(problems)
    train, val = problems[:n_train], problems[n_train : n_train + n_val]
    return SimTask(
        trainset=train,
        valset=val,
        instructions=list(INSTRUCTIONS),
        demos=demo_candidates(train, seed),
        seed=seed,
        program=solve,
        metric=exact_match,
    )


# ---- the program and the metric --------------------------------------------------------


def build_messages(example: Mapping[str, Any], instruction: str, demos: Sequence[Mapping[str, Any]]) -> Messages:
    """The chat messages for one example: the instruction as system prompt, demos, the question."""
    parts = []
    for d in demos:
        block = f"Question: {d['question']}\n"
        if d.get("reasoning"):
            block += f"Reasoning: {d['reasoning']}\n"
        parts.append(block + f"Answer: {d['answer']}\n")
    parts.append(f"Question: {example['question']}")
    return [{"role": "system", "content": instruction}, {"role": "user", "content": "\n".join(parts)}]


def parse_answer(text: str) -> str:
    """The number a reply gives: after ``Answer:`` if present, else the last integer ('' if none)."""
    m = re.search(r"answer:\s*(-?\d+)", text, flags=re.IGNORECASE)
    if m:
        return m.group(1)
    nums = re.findall(r"-?\d+", text)
    return nums[-1] if nums else ""


def solve(example: Mapping[str, Any], instruction: str, demos: Sequence[Mapping[str, Any]], lm: Any) -> str:
    """The program being optimized: one chat call per example, the reply parsed to a number."""
    completion = lm.chat(build_messages(example, instruction, demos), max_tokens=96, temperature=0.0)
    return parse_answer(completion.text)


def exact_match(example: Mapping[str, Any], prediction: Any) -> float:
    """1.0 when the prediction is the gold answer, else 0.0."""
    return 1.0 if str(prediction).strip() == str(example["answer"]) else 0.0


# ---- the simulated model ---------------------------------------------------------------


def _coin(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def logit(instruction: str, n_demos: int, worked: float, model: str = "sim-small") -> float:
    """The simulated model's log-odds of a right answer, before the problem's difficulty.

    ``instruction`` is read for its wording; ``n_demos`` few-shot demos, a fraction
    ``worked`` of them with worked reasoning. The same for every prompt format
    (studyhall's ``solve`` and DSPy's chat adapter), so qualities compare across them.
    """
    s = instruction.lower()
    step = "step by step" in s
    out = 0.8 if "large" in model.lower() else -0.2
    out += 1.0 * step
    out += 0.3 * ("answer:" in s)
    out += 0.3 * ("double-check" in s or "verify" in s)
    out -= 0.8 * any(w in s for w in ("guess", "quickly", "brief"))
    used = min(n_demos, 4) / 4
    out += 0.6 * used + 0.5 * worked * used + 0.3 * worked * step
    out -= 0.15 * max(0, n_demos - 6)  # a long prompt distracts
    return out


def prompt_logit(system: str, user: str, model: str = "sim-small") -> float:
    """The simulated model's log-odds for a prompt of ``solve`` (system = instruction, user = demos + question)."""
    k = max(0, user.count("Question:") - 1)
    return logit(system, k, user.count("Reasoning:") / k if k else 0.0, model)


def answer_probability(system: str, user: str, model: str = "sim-small", difficulty: int = 1) -> float:
    """Chance that the simulated model answers a problem of ``difficulty`` right under this prompt."""
    return _sigmoid(prompt_logit(system, user, model) - 0.8 * (difficulty - 1))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def true_quality(
    instruction: str,
    n_demos: int,
    worked: float,
    problems: Sequence[Mapping[str, Any]] | None = None,
    model: str = "sim-small",
) -> float:
    """The expected accuracy of a prompt over ``problems`` (default: all shipped ones): no coin, no sample."""
    probs = problems if problems is not None else load_problems()
    z = logit(instruction, n_demos, worked, model)
    return sum(_sigmoid(z - 0.8 * (int(p["difficulty"]) - 1)) for p in probs) / len(probs)


def attempt(problem: Mapping[str, Any], p: float, *key: object) -> tuple[int, str]:
    """The simulated model's answer and reasoning: right with probability ``p``, by a coin on ``key``."""
    gold = int(problem["answer"])
    if _coin(*key) < p:
        return gold, str(problem["reasoning"])
    off = 1 + int(_coin("off", *key) * 9)
    value = gold + off if gold - off < 0 or _coin("sign", key[0], key[-1]) < 0.5 else gold - off
    return value, str(problem["reasoning"]).rsplit("=", 1)[0] + f"= {value}"


def find_problem(text: str) -> Example | None:
    """The shipped problem whose question ``text`` ends with (after its last ``Question:`` marker)."""
    at = text.rfind("Question:")
    return _by_question().get(text[at + len("Question:") :].strip()) if at >= 0 else None


class SimResponder:
    """A FakeProvider responder playing a model that solves the shipped word problems.

    Deterministic: the same seed, model and prompt always get the same reply.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __repr__(self) -> str:
        return f"SimResponder(seed={self.seed})"

    def __call__(self, messages: Sequence[Mapping[str, Any]], model: str) -> str:
        system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
        problem = find_problem(user)
        if problem is None:
            return "I can only answer the arithmetic word problems of studyhall's simulated task."
        p = answer_probability(system, user, model, int(problem["difficulty"]))
        value, reasoning = attempt(problem, p, self.seed, model, system, user)
        s = system.lower()
        lines = []
        if "step by step" in s:
            lines += ["Let's work through it.", *[f"{part.strip()}." for part in reasoning.split(";")]]
        if "answer:" in s:
            lines.append(f"Answer: {value}")
        elif any(w in s for w in ("guess", "quickly", "brief")):
            lines.append(str(value))
        elif 0 <= value < len(_WORDS) and _coin("words", self.seed, user) < 0.3:
            lines.append(f"The answer is {_WORDS[value]}.")  # unparseable without a format instruction
        else:
            lines.append(f"The answer is {value}.")
        return "\n".join(lines)
