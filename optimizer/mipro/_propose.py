"""Instruction candidates from an LM, grounded the way MIPROv2's proposer is, in a bounded number of calls.

::

    propose_instructions(lm, trainset, n)
      1 call   a short summary of the task from up to SUMMARY_EXAMPLES examples
      n calls  (``concurrency`` at a time) one instruction each, from: the program's
               description, the summary, the basic instruction, a few examples (a
               different seeded few for each), and a tip (cycled: concise,
               step-by-step, persona, format, ...)
      duplicates (and the basic instruction) dropped; a few more calls to replace
      them, never more than ``max_calls`` in all

DSPy's GroundedProposer spends about three calls per candidate (describe the
program, describe the module, propose) plus up to ten for the dataset summary;
here the program's description is given (``program_description``), so each
candidate costs one call.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from studyhall.optimizer.mipro._evaluate import resolve_lm
from studyhall.storage import InvalidRequest

SUMMARY_EXAMPLES = 10
TIPS: tuple[str, ...] = (
    "",
    "Keep the instruction clear and concise.",
    "Tell the model how to reason about the problem before it answers.",
    "Make the instruction informative and descriptive.",
    'Include a persona relevant to the task ("You are a ...").',
    "Say exactly what form the final answer must take.",
    "Don't be afraid to be creative.",
    "Mention the mistakes that are easy to make on this task and how to avoid them.",
)
"""The varied hints a proposal is given (as MIPROv2's tips), one per candidate in turn."""

_SYSTEM_PROPOSE = (
    "You propose instructions for language-model programs. Read what the program does and examples of its data, "
    "then write one new instruction that would make a language model solve the task better. "
    "Reply with the instruction only."
)
_SYSTEM_SUMMARY = "You summarize datasets for prompt engineers, in two or three sentences."
_PREFIX = re.compile(r"^\s*(?:proposed\s+)?(?:new\s+)?instruction\s*:\s*", re.IGNORECASE)


def show_example(example: Any, limit: int = 500) -> str:
    """An example as text for a prompt: ``key: value`` lines for a mapping, else ``str``; cut at ``limit``."""
    if isinstance(example, Mapping):
        text = "\n".join(f"{k}: {v}" for k, v in example.items())
    elif hasattr(example, "toDict"):  # a dspy.Example
        text = "\n".join(f"{k}: {v}" for k, v in example.toDict().items())
    else:
        text = str(example)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_instruction(text: str) -> str:
    """A proposal's reply as an instruction: the first paragraph, without a label or quotes."""
    text = text.strip().split("\n\n", 1)[0].strip()
    text = _PREFIX.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def propose_instructions(
    lm: Any,
    trainset: Sequence[Any],
    n: int = 8,
    *,
    program_description: str = "",
    basic_instruction: str = "",
    examples_per_prompt: int = 3,
    max_calls: int | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    max_tokens: int = 256,
    concurrency: int = 4,
    show: Callable[[Any], str] = show_example,
) -> list[str]:
    """Propose up to ``n`` distinct instructions, grounded in the data, in about ``n + 1`` LM calls.

    Args:
        lm: an ``LLMClient`` (anything with its ``chat``) or the name of a registered service.
        trainset: examples shown to the proposer (a summary of up to 10, then a few per proposal).
        n: instructions wanted.
        program_description: what the program does (its inputs, outputs and steps).
        basic_instruction: the program's current instruction; never returned.
        examples_per_prompt: examples shown with each proposal (a different seeded few each time).
        max_calls: the most LM calls in all, summary included (default ``n + 1 + max(1, n // 4)``:
            a few spare calls replace duplicate or empty proposals).
        seed: seeds which examples and tips each proposal gets.
        temperature, max_tokens: of each proposal call.
        concurrency: proposal calls in flight at once.
        show: turns an example into prompt text.

    Returns:
        The proposals, de-duplicated (case and spacing ignored), in the order asked.

    Example:
        >>> ins = propose_instructions(client, trainset, n=8, program_description="question -> answer",
        ...                            basic_instruction="Answer the question.")  # doctest: +SKIP
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest(f"propose_instructions: n must be an integer >= 1; got {n!r}")
    budget = max_calls if max_calls is not None else n + 1 + max(1, n // 4)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequest(f"propose_instructions: max_calls must be an integer >= 1; got {max_calls!r}")
    client = resolve_lm(lm)
    data = list(trainset)
    rng = random.Random(f"propose:{seed}")
    summary = ""
    calls = 0
    if data and budget > 1:
        shown = "\n\n".join(show(x) for x in data[:SUMMARY_EXAMPLES])
        ask = f"Here are examples from a dataset:\n\n{shown}\n\nSummarize the task these examples pose and what makes it hard."
        summary = client.chat(
            [{"role": "system", "content": _SYSTEM_SUMMARY}, {"role": "user", "content": ask}],
            max_tokens=max_tokens,
            temperature=0.0,
        ).text.strip()
        calls += 1
    tips = list(TIPS)
    rng.shuffle(tips)
    seen = {_key(basic_instruction)} if basic_instruction else set()
    out: list[str] = []
    j = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="mipro-propose") as pool:
        while len(out) < n and calls < budget:
            want = min(n - len(out), budget - calls)
            prompts = []
            for _ in range(want):
                shots = rng.sample(data, min(examples_per_prompt, len(data))) if data else []
                prompts.append(
                    _proposal_prompt(
                        program_description, summary, basic_instruction, shots, tips[j % len(tips)], j, show
                    )
                )
                j += 1
            replies = list(
                pool.map(lambda m: client.chat(m, max_tokens=max_tokens, temperature=temperature).text, prompts)
            )
            calls += len(prompts)
            for reply in replies:
                text = clean_instruction(reply)
                if text and _key(text) not in seen and len(out) < n:
                    seen.add(_key(text))
                    out.append(text)
    return out


def _proposal_prompt(
    description: str, summary: str, basic: str, shots: list[Any], tip: str, j: int, show: Callable[[Any], str]
) -> list[dict[str, str]]:
    parts = []
    if description:
        parts.append(f"The program: {description}")
    if summary:
        parts.append(f"The data: {summary}")
    if shots:
        parts.append("Examples:\n\n" + "\n\n".join(show(x) for x in shots))
    if basic:
        parts.append(f"Its current instruction: {basic}")
    if tip:
        parts.append(f"Tip: {tip}")
    parts.append(f"Propose new instruction #{j + 1}.")
    return [{"role": "system", "content": _SYSTEM_PROPOSE}, {"role": "user", "content": "\n\n".join(parts)}]
