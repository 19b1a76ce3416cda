"""OpenTelemetry export (the ``otel`` extra): trials, trace steps, workflow steps and LLM calls as spans.

::

    run_trial (the process that runs the objective) ── span "studyhall.trial"
      ├── trace.span(name) ───────── span  name          (trace.step(name): a span without duration)
      ├── Workflow.run ───────────── span  "workflow NAME"
      │     └── each step ────────── span  "workflow.step STEP"
      └── LLMClient.chat ─────────── span  "chat MODEL"  (GenAI semantic conventions:
                                    gen_ai.operation.name, gen_ai.request.model,
                                    gen_ai.response.model, gen_ai.usage.input_tokens,
                                    gen_ai.usage.output_tokens; studyhall.llm.latency_s)

Off unless configured: spans are made once a TracerProvider is set, by
:func:`enable` or as OpenTelemetry's global provider (``trace.set_tracer_provider``,
or ``opentelemetry-instrument``). A process that never imported OpenTelemetry pays one
dict lookup per hook. Pool workers are processes of their own: configure the SDK
there too (an objective module or an initializer) for their trials' spans.

The LLM call span comes from the trial's telemetry recorder: bridge reports each
answered call on it (latency, tokens, attempts), so :class:`OtelRecorder`, the
recorder a trial gets while a provider is configured, turns those reports into a
span without studyhall.bridge knowing about OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from studyhall.bridge import TaskRecorder

__all__ = ["OtelRecorder", "disable", "enable", "recorder", "span", "step", "tracer"]

SCOPE = "studyhall"
MAX_ATTR = 1000  # longest string attribute (step data, params): spans are not the place for whole prompts
_explicit: Any = None  # the provider given to enable(), if any


def enable(tracer_provider: Any = None) -> None:
    """Export spans to ``tracer_provider`` (default: OpenTelemetry's global provider)."""
    global _explicit
    if tracer_provider is None:
        from opentelemetry import trace

        tracer_provider = trace.get_tracer_provider()
    _explicit = tracer_provider


def disable() -> None:
    """Stop using the provider given to :func:`enable` (the global one, if configured, still applies)."""
    global _explicit
    _explicit = None


def tracer() -> Any:
    """The tracer spans go to, or None when OpenTelemetry is not configured in this process."""
    if _explicit is not None:
        return _explicit.get_tracer(SCOPE)
    if "opentelemetry.trace" not in sys.modules:  # nobody imported it, so nobody configured it
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider.get_tracer(SCOPE)


def _value(v: Any) -> Any:
    """An attribute value OpenTelemetry accepts: bool, int, float or str (others as short JSON)."""
    if isinstance(v, (bool, int, float)):
        return v
    text = v if isinstance(v, str) else json.dumps(v, default=repr, separators=(",", ":"))
    return text[:MAX_ATTR]


def _attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in attrs.items() if v is not None}


def _with_data(attributes: Mapping[str, Any] | None, data: Any) -> dict[str, Any]:
    out = dict(attributes or {})
    if data is not None:  # summarised only when a span is made: tracing must cost nothing when off
        from studyhall.optimizer.trace import summarize_value

        out["studyhall.data"] = summarize_value(data)
    return _attrs(out)


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, data: Any = None) -> Iterator[Any]:
    """A span around the block (the current span's child), or nothing when OpenTelemetry is off.

    ``data`` (a step's payload) becomes the ``studyhall.data`` attribute, as short JSON.
    An exception leaving the block is recorded on the span and sets its status to ERROR.
    """
    t = tracer()
    if t is None:
        yield None
        return
    with t.start_as_current_span(name, attributes=_with_data(attributes, data)) as s:
        yield s


def step(name: str, attributes: Mapping[str, Any] | None = None, data: Any = None) -> None:
    """A span without duration: one recorded step (``trace.step``)."""
    t = tracer()
    if t is not None:
        t.start_span(name, attributes=_with_data(attributes, data)).end()


def set_attributes(s: Any, attributes: Mapping[str, Any]) -> None:
    """Add ``attributes`` to span ``s`` (None: OpenTelemetry is off)."""
    if s is not None:
        s.set_attributes(_attrs(attributes))


def trial_attributes(job: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of a trial's span, from ``run_trial``'s job: study, number and parameters."""
    attrs: dict[str, Any] = {"studyhall.study": job.get("study") or None, "studyhall.trial.number": job.get("number")}
    for k, v in (job.get("params") or {}).items():
        attrs[f"studyhall.param.{k}"] = v
    return attrs


def outcome_attributes(out: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial's span learns at its end: state, value, number of scores, error."""
    scores = out.get("scores")
    value = out.get("value")
    return {
        "studyhall.trial.state": out.get("status"),
        "studyhall.trial.value": float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else None,
        "studyhall.trial.scores": len(scores) if scores is not None else None,
        "error.type": (str(out["error"]).split(":", 1)[0] or None) if out.get("error") else None,
    }


# ---- LLM calls ------------------------------------------------------------------------------


class OtelRecorder(TaskRecorder):
    """A trial's recorder that also makes a GenAI span of each LLM call reported on it.

    bridge reports an answered call through :meth:`TaskRecorder.llm_call` from the calling
    thread; the span ends there, started ``latency_s`` earlier, as a child of that
    thread's current span (the trial's).
    """

    def __init__(self, tracer: Any) -> None:
        super().__init__()
        self._tracer = tracer

    def llm_call(
        self,
        model: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        attempts: int,
        finish_reason: str | None = None,
    ) -> None:
        """Record the call's samples and totals, and end its span."""
        super().llm_call(model, latency_s, prompt_tokens, completion_tokens, attempts, finish_reason)
        self._emit(
            {
                "model": model or None,
                "latency_s": latency_s,
                "finish_reason": finish_reason,
                "llm.prompt_tokens": prompt_tokens,
                "llm.completion_tokens": completion_tokens,
                "llm.attempts": attempts,
            }
        )

    def _emit(self, call: dict[str, Any]) -> None:
        end = time.time_ns()
        model = call.get("model")
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": _int(call.get("llm.prompt_tokens")),
            "gen_ai.usage.output_tokens": _int(call.get("llm.completion_tokens")),
            "gen_ai.response.finish_reasons": [call["finish_reason"]] if call.get("finish_reason") else None,
            "studyhall.llm.latency_s": call["latency_s"],
            "studyhall.llm.attempts": _int(call.get("llm.attempts")),
        }
        from opentelemetry.trace import SpanKind

        s = self._tracer.start_span(
            f"chat {model}" if model else "chat",
            kind=SpanKind.CLIENT,
            attributes={k: v for k, v in attrs.items() if v is not None},
            start_time=end - int(call["latency_s"] * 1e9),
        )
        s.end(end_time=end)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def recorder() -> TaskRecorder | None:
    """A recorder for a trial: an :class:`OtelRecorder` while OpenTelemetry is configured, else None (the default)."""
    t = tracer()
    return OtelRecorder(t) if t is not None else None
