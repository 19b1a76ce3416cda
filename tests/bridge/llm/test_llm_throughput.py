"""Steady state against a strict provider: the binding limit is used to >= 90% with zero 429s."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest

from studyhall.bridge import Completion, FakeProvider, Limit, LLMClient, RateLimiter


def steady_rate(admitted: list[tuple[float, int]], use_tokens: bool) -> float:
    """Units per second the provider admitted over the second half of the run (the burst long spent)."""
    t0, t1 = admitted[0][0], admitted[-1][0]
    rest = [a for a in admitted if a[0] >= (t0 + t1) / 2]
    assert len(rest) >= 20, "the workload must outlast the burst to measure a steady state"
    units = sum(c for _, c in rest[1:]) if use_tokens else len(rest) - 1
    return units / (rest[-1][0] - rest[0][0])


def run(fp: FakeProvider, limiter: RateLimiter, conversations: list, max_tokens: int) -> list:
    with LLMClient("fake-model", base_url=fp.base_url, limiter=limiter, timeout=60, max_retries=6) as lm:
        return lm.chat_many(conversations, concurrency=8, max_tokens=max_tokens)


@pytest.mark.slow
def test_rpm_bound_workload_uses_the_request_limit():
    rpm, per = 60, 2.0  # 30 requests/s
    with FakeProvider(rpm=rpm, tpm=None, per=per, latency_s=(0.005, 0.02)) as fp:
        # A fifth of the burst held back (0.4 s of refill) absorbs the scheduling jitter between
        # limiter and provider on a loaded 2-core machine; the steady rate is the provider's own.
        lim = RateLimiter(f"rpm-{uuid.uuid4().hex[:8]}", limits=[Limit(requests=rpm, per=per, burst=0.8 * rpm)])
        out = run(fp, lim, [[{"role": "user", "content": f"q{i}"}] for i in range(144)], max_tokens=8)
        stats, admitted = fp.stats(), fp.admitted()
    assert all(isinstance(c, Completion) for c in out)
    assert stats["rate_limited"] == 0
    assert steady_rate(admitted, use_tokens=False) >= 0.9 * rpm / per


@pytest.mark.slow
def test_tpm_bound_workload_uses_the_token_limit():
    tpm, per = 6000, 2.0  # 3000 tokens/s, charged as prompt + max_tokens
    with FakeProvider(rpm=None, tpm=tpm, per=per, latency_s=(0.005, 0.02)) as fp:
        lim = RateLimiter(f"tpm-{uuid.uuid4().hex[:8]}", limits=[Limit(tokens=tpm, per=per, burst=0.8 * tpm)])
        convs = [[{"role": "user", "content": "w" * (100 + (i * 37) % 700)}] for i in range(70)]
        out = run(fp, lim, convs, max_tokens=100)
        stats, admitted = fp.stats(), fp.admitted()
    assert all(isinstance(c, Completion) for c in out)
    assert stats["rate_limited"] == 0
    rate = steady_rate(admitted, use_tokens=True)
    assert 0.9 * tpm / per <= rate <= 1.05 * tpm / per
    assert sum(c for _, c in admitted) == pytest.approx(stats["tokens"])


class JitteryClient(LLMClient):
    """An LLMClient whose requests take 0-10 ms (seeded) to leave, as over a real network:
    requests the limiter spaced evenly arrive bunched up."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def _post(self, body: dict[str, Any], timeout: float) -> Any:
        with self._rng_lock:
            delay = self._rng.uniform(0.0, 0.010)
        time.sleep(delay)  # the network's delay, not a synchronisation
        return super()._post(body, timeout)


@pytest.mark.slow
def test_a_limit_copied_from_the_providers_docs_draws_no_429s():
    # issue 13 item 18: the limiter set to exactly the provider's published limit; the
    # default headroom (10% of the window, here 0.6 s) absorbs the jitter.
    rpm, per = 360, 6.0  # 60 requests/s
    with FakeProvider(rpm=rpm, tpm=None, per=per, latency_s=(0.005, 0.02)) as fp:
        lim = RateLimiter(f"docs-{uuid.uuid4().hex[:8]}", limits=[Limit(requests=rpm, per=per)])
        with JitteryClient("fake-model", base_url=fp.base_url, limiter=lim, timeout=60, max_retries=6) as lm:
            out = lm.chat_many(
                [[{"role": "user", "content": f"q{i}"}] for i in range(540)], concurrency=8, max_tokens=8
            )
        stats, admitted = fp.stats(), fp.admitted()
    assert all(isinstance(c, Completion) for c in out)
    assert stats["rate_limited"] == 0, stats
    assert steady_rate(admitted, use_tokens=False) >= 0.95 * rpm / per
