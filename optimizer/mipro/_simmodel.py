"""The simulated model, complete: it also proposes instructions and speaks DSPy's chat format.

::

    FakeProvider(responder=SimModel(seed)) ── messages ──> which request is it?
      a proposal ("propose ... instruction", DSPy's `proposed_instruction`)
            ──> one of PHRASINGS, good and poor, drawn by a coin on (seed, prompt, repeat)
      DSPy's helpers (dataset observations, summary, program/module description)
            ──> short canned text in the fields asked for ("COMPLETE" to prior observations)
      a task in DSPy's chat format ([[ ## question ## ]], demos as earlier turns)
            ──> the instruction (after "your objective is:"), the demos counted (worked
                ones: with reasoning), the same log-odds as the plain format, the
                fields asked for ([[ ## reasoning ## ]], [[ ## answer ## ]])
      anything else ──> SimResponder (studyhall's own `solve` format)

The proposer knows nothing of who asks: DSPy's GroundedProposer and studyhall's
``propose_instructions`` get the same mix of phrasings for the same number of
requests; what differs is how many each asks for and what each does with them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from studyhall.optimizer.mipro._simtask import (
    SimResponder,
    _by_question,
    _coin,
    _sigmoid,
    attempt,
    logit,
)

PHRASINGS: tuple[str, ...] = (
    # good: the simulated model does best when told to work step by step
    "Solve the word problem step by step, showing each calculation, then give the final number.",
    "Work through the problem step by step and double-check each calculation before answering.",
    "Think step by step. Verify the arithmetic, then end with 'Answer: <number>'.",
    "You are a careful math tutor. Reason step by step and give the final answer as a number.",
    # middling
    "Read the problem carefully and compute the answer. End with 'Answer: <number>'.",
    "Solve the arithmetic word problem and double-check your result.",
    "Determine the numeric answer to the question.",
    "Answer the math question accurately.",
    # poor: haste
    "Reply quickly with just the number.",
    "Be brief: give only the final number, no explanation.",
    "Guess the answer if the problem looks long.",
    "You are a busy assistant; answer as quickly as you can.",
)
"""What the simulated proposer answers with: 4 good, 4 middling, 4 poor phrasings."""

_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")
_OBJECTIVE = "your objective is:"


def _output_fields(system: str) -> list[str]:
    """The output fields a DSPy chat-adapter prompt asks for, in order."""
    block = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    return re.findall(r"`(\w+)`", block)


def _dspy_reply(fields: Sequence[str], values: Mapping[str, str]) -> str:
    return "".join(f"[[ ## {f} ## ]]\n{values.get(f, '')}\n\n" for f in fields) + "[[ ## completed ## ]]"


class SimModel(SimResponder):
    """The FakeProvider responder for the simulated task: it answers, proposes and describes.

    Deterministic: the same requests, in any order, get the same replies (a repeated
    proposal request, as sampled at temperature 1, gets the next draw).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SimModel(seed={self.seed})"

    def __getstate__(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["seed"])  # type: ignore[misc]

    def __call__(self, messages: Sequence[Mapping[str, Any]], model: str) -> str:
        system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        text = "\n".join(str(m.get("content", "")) for m in messages)
        low = text.lower()
        fields = _output_fields(system) if "[[ ## " in system else []
        if "proposed_instruction" in fields or ("propose" in low and "instruction" in low and not fields):
            phrasing = self._propose(text)
            return _dspy_reply(fields, {"proposed_instruction": phrasing}) if fields else phrasing
        if fields and "question" not in _input_fields(system):
            return _dspy_reply(fields, _helper_values(fields, text))
        if fields:
            return self._dspy_task(messages, system, fields, model)
        if "summarize" in system.lower():
            return "Arithmetic word problems about everyday quantities; each needs one to three operations and has a whole-number answer."
        return super().__call__(messages, model)

    def _propose(self, prompt: str) -> str:
        with self._lock:
            n = self._seen.get(prompt, 0)
            self._seen[prompt] = n + 1
        return PHRASINGS[int(_coin("propose", self.seed, prompt, n) * len(PHRASINGS))]

    def _dspy_task(self, messages: Sequence[Mapping[str, Any]], system: str, fields: list[str], model: str) -> str:
        last = str(messages[-1].get("content", ""))
        m = re.search(r"\[\[ ## question ## \]\]\n(.*?)(?:\n\n|$)", last, flags=re.S)
        problem = _by_question().get(m.group(1).strip()) if m else None
        if problem is None:
            return _dspy_reply(fields, {f: "I can only answer the simulated task's word problems." for f in fields})
        instruction = system.split(_OBJECTIVE, 1)[-1].strip() if _OBJECTIVE in system else system
        demos = [str(x.get("content", "")) for x in messages[1:-1] if x.get("role") == "assistant"]
        worked = sum(
            "[[ ## reasoning ## ]]" in d and "Not supplied" not in d.split("[[ ## answer", 1)[0] for d in demos
        )
        p = _sigmoid(
            logit(instruction, len(demos), worked / len(demos) if demos else 0.0, model)
            - 0.8 * (int(problem["difficulty"]) - 1)
        )
        prompt = "\n".join(str(x.get("content", "")) for x in messages)
        value, reasoning = attempt(problem, p, self.seed, model, prompt, last)
        return _dspy_reply(fields, {"reasoning": reasoning, "answer": str(value)})


def _input_fields(system: str) -> list[str]:
    block = system.split("Your input fields are:", 1)[-1].split("Your output fields are:", 1)[0]
    return re.findall(r"`(\w+)`", block)


def _helper_values(fields: Sequence[str], text: str) -> dict[str, str]:
    """Canned answers to DSPy's proposer helpers (dataset observations, summaries, descriptions)."""
    if "prior_observations" in text:
        return {f: "COMPLETE" for f in fields}
    canned = {
        "observations": "The examples are arithmetic word problems about everyday quantities with whole-number answers.",
        "summary": "Arithmetic word problems needing one to three operations; the answer is a whole number.",
        "program_description": "The program answers arithmetic word problems with one language-model call that reasons, then answers.",
        "module_description": "The module reads the question and produces reasoning and a numeric answer.",
    }
    return {f: canned.get(f, "Not applicable.") for f in fields}
