"""``Completion``, one chat answer: read from an OpenAI-style response, or from the cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from studyhall.bridge._errors import ProviderError

# Fields that describe one call rather than the answer: not cached.
_PER_CALL = ("latency_s", "attempts", "waited_s", "cached")


@dataclass(frozen=True)
class Completion:
    """One chat answer.

    ``latency_s`` is the round trip of the attempt that answered; ``waited_s`` the
    time spent before it (limiter, backoff, failed attempts); ``attempts`` counts
    HTTP attempts (0 for a cache hit).
    """

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    finish_reason: str | None = None
    waited_s: float = 0.0
    cached: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def parse_completion(
    data: dict[str, Any], *, model: str, base_url: str, latency: float, attempts: int, waited: float
) -> Completion:
    """The Completion in a 200 answer of ``model`` at ``base_url``.

    Raises:
        ProviderError: the body has no ``choices[0].message`` (not an OpenAI-compatible API?).
    """
    try:
        choice = data["choices"][0]
        text = choice.get("message", {}).get("content") or ""
        usage = data.get("usage") or {}
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ProviderError(
            f"{model} at {base_url} answered 200 without choices[0].message; "
            "is base_url an OpenAI-compatible /v1 root?",
            status=200,
            model=model,
        ) from exc
    return Completion(
        text=str(text),
        model=str(data.get("model") or model),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_s=latency,
        attempts=attempts,
        finish_reason=choice.get("finish_reason"),
        waited_s=max(0.0, waited),
    )


def to_cache(completion: Completion) -> dict[str, Any]:
    """The fields of the answer worth caching (not those of the call that got it)."""
    saved = asdict(completion)
    for k in _PER_CALL:
        saved.pop(k)
    return saved


def from_cache(fields: dict[str, Any]) -> Completion:
    """A cached answer as a Completion of a call that made no attempt."""
    return Completion(**{**fields, "latency_s": 0.0, "attempts": 0, "waited_s": 0.0, "cached": True})
