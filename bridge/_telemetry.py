"""Per-task telemetry gathered where the work runs and shipped back with the result.

Inside a trial (in a pool worker or in-process), code records samples and counts
on the current recorder; ``optimize`` summarises them into the trial's
distributions (``llm.latency_s`` ...) and user_attrs (``llm.tokens`` ...)::

    with recording() as rec:          # set by the trial runner
        ... LLMClient.chat() -> current_recorder().observe("llm.latency_s", 0.41)
    rec.samples, rec.counters         # travel back to the parent

Threads started inside a trial do not inherit contextvars by themselves; run
their work in ``contextvars.copy_context()`` (``LLMClient.chat_many`` does).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class TaskRecorder:
    """Samples (for distributions) and counters (for totals) of one task; thread-safe."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe(self, name: str, value: float) -> None:
        """Add one sample of ``name`` (summarised as p50/p90/p99... on the trial)."""
        with self._lock:
            self.samples.setdefault(name, []).append(float(value))

    def add(self, name: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the counter ``name`` (a total on the trial)."""
        with self._lock:
            self.counters[name] = self.counters.get(name, 0.0) + amount

    def llm_call(
        self,
        model: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        attempts: int,
        finish_reason: str | None = None,
    ) -> None:
        """Record one answered LLM call: its latency and tokens as samples, its tokens and retries as totals.

        Subclasses that export calls elsewhere (OpenTelemetry spans) extend this one hook.
        """
        self.observe("llm.latency_s", latency_s)
        self.observe("llm.prompt_tokens", prompt_tokens)
        self.observe("llm.completion_tokens", completion_tokens)
        self.observe("llm.attempts", attempts)
        self.add("llm.tokens", prompt_tokens + completion_tokens)
        if attempts > 1:
            self.add("llm.retries", attempts - 1)

    def snapshot(self) -> tuple[dict[str, list[float]], dict[str, float]]:
        """Copies of the samples and counters, safe to pickle while threads still record."""
        with self._lock:
            return {k: list(v) for k, v in self.samples.items()}, dict(self.counters)


_current: ContextVar[TaskRecorder | None] = ContextVar("studyhall_task_recorder", default=None)


def current_recorder() -> TaskRecorder | None:
    """The recorder of the task running in this context, or None outside any task."""
    return _current.get()


@contextlib.contextmanager
def recording(recorder: TaskRecorder | None = None) -> Iterator[TaskRecorder]:
    """Make ``recorder`` (or a new one) current for the duration of the block."""
    rec = recorder or TaskRecorder()
    token = _current.set(rec)
    try:
        yield rec
    finally:
        _current.reset(token)
