"""Token accounting of one LLM call: what it reserves on the limiter, and the correction once its usage is known.

Token accounting follows OpenAI's: a request is charged its prompt tokens plus
``max_tokens`` when it is admitted, so that is what the limiter reserves; when the
answer comes, the prompt estimate is reconciled with ``usage.prompt_tokens``
(without ``max_tokens``, the reserved default is reconciled with the tokens
actually generated). ``input_tokens``/``output_tokens`` limits (Anthropic-style)
are reserved as the prompt estimate and ``max_tokens`` and reconciled with usage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Messages = Sequence[Mapping[str, Any]]
DEFAULT_MAX_TOKENS = 256  # reserved when a call gives no max_tokens
PER_MESSAGE_TOKENS = 4  # role, name and separators: a little over OpenAI's 3, to err high
REPLY_TOKENS = 3


def estimate_prompt_tokens(messages: Messages) -> int:
    """Tokens a prompt will cost, without a tokenizer: ``sum(ceil(chars/4) + 4) + 3``.

    Four characters a token is the usual rule for English; the per-message
    overhead is set a token above OpenAI's documented 3 so that the estimate
    errs high (the limiter then gives the difference back).
    """
    total = REPLY_TOKENS
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        total += math.ceil(len(content) / 4) + PER_MESSAGE_TOKENS
    return total


@dataclass(frozen=True)
class Reservation:
    """The tokens a call reserves before it goes: the prompt estimate and the answer's allowance."""

    prompt: int
    output: int
    max_tokens: int | None  # as the call gave it: None means ``output`` is a default

    @classmethod
    def of(cls, messages: Messages, max_tokens: int | None) -> Reservation:
        """What a call of ``messages`` with ``max_tokens`` reserves."""
        return cls(estimate_prompt_tokens(messages), max_tokens or DEFAULT_MAX_TOKENS, max_tokens)

    @property
    def tokens(self) -> int:
        """The total reserved on a ``tokens`` bucket."""
        return self.prompt + self.output

    def corrections(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        """What to add to each kind of bucket (``RateLimiter.adjust``) once the usage is known."""
        charged_out = self.max_tokens if self.max_tokens is not None else completion_tokens
        return {
            "tokens": prompt_tokens + charged_out - self.tokens,
            "input_tokens": prompt_tokens - self.prompt,
            "output_tokens": completion_tokens - self.output,
        }
