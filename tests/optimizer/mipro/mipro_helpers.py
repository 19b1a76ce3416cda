"""Shared by the MiproLoop tests: an in-process simulated LM and a loop on the simulated task."""

from __future__ import annotations

import threading
import time
from typing import Any

from studyhall.bridge import Completion, ProviderError
from studyhall.optimizer import MiproLoop
from studyhall.optimizer.mipro._simtask import SimResponder, arith_task, exact_match, solve

TASK = arith_task(n_train=40, n_val=60)


class SimLM:
    """An in-process stand-in for an LLM client: the simulated model, real Completion objects."""

    def __init__(self, fail_on: frozenset[str] = frozenset(), delay: float = 0.0, responder: Any = None) -> None:
        self.responder = responder or SimResponder(seed=0)
        self.fail_on = fail_on
        self.delay = delay
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def chat(self, messages, max_tokens=None, temperature=None, **kw):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)  # simulated model latency, not synchronisation
            question = messages[-1]["content"].rsplit("Question: ", 1)[-1]
            if question in self.fail_on:
                raise ProviderError("503 from the provider after 6 retries", status=503, model="sim")
            text = self.responder(messages, "sim-small")
            prompt = sum(len(m["content"]) for m in messages) // 4
            return Completion(text, "sim-small", prompt, len(text) // 4, 0.01, 1)
        finally:
            with self._lock:
                self.in_flight -= 1


def make_loop(url: str, name: str, lm: Any = None, **kw: Any) -> MiproLoop:
    """A loop on the simulated task: 8 instructions x 6 demo sets, minibatches of 20, inline trials."""
    opts: dict[str, Any] = dict(
        instructions=TASK.instructions,
        demos=TASK.demos,
        valset=TASK.valset,
        lm=lm or SimLM(),
        study=name,
        storage=url,
        minibatch_size=20,
        full_eval_every=5,
        workers=0,
        seed=0,
    )
    opts.update(kw)
    return MiproLoop(solve, exact_match, **opts)
