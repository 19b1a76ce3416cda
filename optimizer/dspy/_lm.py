"""DSPy's LM calls through studyhall's ``LLMClient``: rate-limited across processes, recorded per trial.

::

    dspy program ──> dspy.LM(engine=StudyhallEngine(client))    (DSPy's adapters, cache, history)
        StudyhallEngine.complete(lm15 Request) ──> client.chat(messages, max_tokens, temperature)
            ──> the shared RateLimiter (storage-backed: every process and host), retries,
                fallbacks; the call lands on the trial's recorder (llm.calls, llm.latency_s ...)
        <── lm15 Response(text, usage)

DSPy 3.4 asks custom LMs for an engine (``complete(Request) -> Response``); the
older ``BaseLM.forward`` plug-in is deprecated. The engine is picklable (the
client is), so a program carrying it runs in pool workers, where it keeps sharing
the same limits.
"""

from __future__ import annotations

from typing import Any

from studyhall.optimizer.mipro._evaluate import resolve_lm
from studyhall.storage import InvalidRequest


class StudyhallEngine:
    """A DSPy engine (``dspy.LM(model, engine=...)``) that sends each request through a studyhall ``LLMClient``.

    Args:
        client: an ``LLMClient`` (or anything with its ``chat``), or the name of a
            registered service (resolved at each call, so pool workers use theirs).
    """

    def __init__(self, client: Any) -> None:
        if not isinstance(client, str) and not callable(getattr(client, "chat", None)):
            raise InvalidRequest(f"StudyhallEngine needs an LLMClient (or a service name); got {type(client).__name__}")
        self.client = client

    def __repr__(self) -> str:
        return f"StudyhallEngine({self.client!r})"

    def complete(self, request: Any) -> Any:
        """Answer one DSPy request with one ``chat`` call."""
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import Message, Response, TextPart, Usage

        validate_request(request)
        messages: list[dict[str, str]] = []
        if request.system is not None:
            system = (
                request.system
                if isinstance(request.system, str)
                else "".join(getattr(p, "text", "") or "" for p in request.system)
            )
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        cfg = request.config
        params: dict[str, Any] = {}
        if cfg.stop:
            params["stop"] = list(cfg.stop)
        if cfg.top_p is not None:
            params["top_p"] = cfg.top_p
        if cfg.seed is not None:
            params["seed"] = cfg.seed
        c = resolve_lm(self.client).chat(messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, **params)
        usage = Usage(
            input_tokens=c.prompt_tokens,
            output_tokens=c.completion_tokens,
            total_tokens=c.prompt_tokens + c.completion_tokens,
        )
        return Response(
            id=None,
            model=c.model,
            message=Message.assistant([TextPart(c.text)]),
            finish_reason=_finish(c.finish_reason),
            usage=usage,
        )

    def stream(self, request: Any) -> Any:
        """One event stream of the whole answer (studyhall's client does not stream)."""
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the client owns its connections."""


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def dspy_lm(client: Any, *, model: str | None = None, cache: bool = False, **kwargs: Any) -> Any:
    """A ``dspy.LM`` whose calls go through ``client`` (an ``LLMClient`` or a service name).

    Args:
        client: the studyhall client: its RateLimiter, retries, fallbacks and telemetry apply.
        model: the name DSPy shows (default: the client's model).
        cache: DSPy's own response cache (off by default: the client has its own, ``cache=True``).
        kwargs: more ``dspy.LM`` arguments (``temperature``, ``max_tokens`` ...).

    Example:
        >>> lm = dspy_lm(LLMClient("gpt-4o-mini", limiter=limiter))  # doctest: +SKIP
        >>> dspy.configure(lm=lm)  # doctest: +SKIP
    """
    import dspy

    name = model or getattr(client, "model", None) or str(client)
    return dspy.LM(f"studyhall/{name}", engine=StudyhallEngine(client), cache=cache, **kwargs)
