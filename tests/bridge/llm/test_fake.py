"""FakeProvider: an OpenAI-compatible server with OpenAI-style limits, checked with httpx and the openai SDK."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from studyhall.bridge import FakeProvider, InvalidRequest
from studyhall.bridge.llm import retry_delay
from studyhall.bridge.llm._fake import format_reset, prompt_tokens

Q = [{"role": "user", "content": "2+2?"}]


def post(fp: FakeProvider, http: httpx.Client, messages=Q, **body) -> httpx.Response:
    return http.post(f"{fp.base_url}/chat/completions", json={"model": "m", "messages": messages, **body})


def test_openai_sdk_works_against_it():
    with FakeProvider(rpm=2, tpm=None, per=60.0, latency_s=0.0, responder=lambda m, model: f"4 ({model})") as fp:
        with openai.OpenAI(base_url=fp.base_url, api_key="x", max_retries=0) as sdk:
            r = sdk.chat.completions.create(model="gpt-4o-mini", messages=Q, max_tokens=16, temperature=0.0)
            assert r.choices[0].message.content == "4 (gpt-4o-mini)"
            assert r.choices[0].finish_reason == "stop" and r.model == "gpt-4o-mini"
            assert r.usage is not None and r.usage.prompt_tokens == prompt_tokens(Q) == 7
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
            assert [m.id for m in sdk.models.list()] == ["fake-model"]
            sdk.chat.completions.create(model="gpt-4o-mini", messages=Q, max_tokens=16)
            with pytest.raises(openai.RateLimitError):
                sdk.chat.completions.create(model="gpt-4o-mini", messages=Q, max_tokens=16)
        assert fp.stats() == {
            "requests": 3,
            "completed": 2,
            "rate_limited": 1,
            "server_errors": 0,
            "bad_requests": 0,
            "tokens": 46,
        }


def test_429_says_how_long_to_wait_like_openai():
    with FakeProvider(rpm=2, tpm=None, per=60.0, latency_s=0.0) as fp, httpx.Client() as http:
        ok = post(fp, http, max_tokens=5)
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        post(fp, http, max_tokens=5)
        r = post(fp, http, max_tokens=5)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"
    h = r.headers
    assert h["retry-after"] == "30" and 29_000 < int(h["retry-after-ms"]) <= 30_000
    assert h["x-ratelimit-remaining-requests"] == "0" and h["x-ratelimit-reset-requests"].startswith("59.")
    assert retry_delay(h) == pytest.approx(30.0, abs=1.0)


def test_tpm_is_charged_as_prompt_plus_max_tokens_at_admission():
    long = [{"role": "system", "content": "s" * 400}, *Q]
    with FakeProvider(rpm=None, tpm=1000, per=60.0, latency_s=0.0) as fp, httpx.Client() as http:
        assert post(fp, http, long, max_tokens=50).status_code == 200
        assert fp.stats()["tokens"] == prompt_tokens(long) + 50 == 160
        assert post(fp, http, max_completion_tokens=100).status_code == 200  # the newer parameter name
        assert post(fp, http).status_code == 200  # no max_tokens: 256 are charged
        assert fp.stats()["tokens"] == 160 + 107 + 263
        r = post(fp, http, long, max_tokens=600)
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        big = post(fp, http, max_tokens=5000)  # more than the whole limit: never retryable
        assert big.status_code == 429 and big.headers["x-should-retry"] == "false"
        assert "Request too large" in big.json()["error"]["message"]
        assert fp.admitted()[0][1] == 160 and len(fp.admitted()) == 3


def test_server_errors_are_seeded():
    def statuses(seed: int) -> list[int]:
        with FakeProvider(rpm=None, tpm=None, latency_s=0.0, error_rate=0.5, seed=seed) as fp, httpx.Client() as http:
            out = [post(fp, http, max_tokens=4).status_code for _ in range(24)]
            assert fp.stats()["server_errors"] == sum(s != 200 for s in out)
            return out

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 500, 503}
    assert first != statuses(8)


def test_latency_forms_and_responder():
    seen = []

    def latency(messages, model):
        seen.append((messages[-1]["content"], model))
        return 0.0

    with FakeProvider(rpm=None, tpm=None, latency_s=latency, responder=lambda m, model: "word " * 100) as fp:
        with httpx.Client() as http:
            r = post(fp, http, max_tokens=10).json()
    assert seen == [("2+2?", "m")]
    # Longer answers than max_tokens are cut, as a real model would.
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 10
    with FakeProvider(rpm=None, tpm=None, latency_s=(0.05, 0.06)) as fp, httpx.Client() as http:
        start = time.monotonic()
        post(fp, http)
        assert time.monotonic() - start >= 0.05
    for bad in ({"latency_s": (0.2, 0.1)}, {"rpm": 0}, {"error_rate": 1.5}, {"per": 0}):
        with pytest.raises(InvalidRequest):
            FakeProvider(**bad)


def test_serves_many_concurrent_connections():
    n = 40
    barrier = threading.Barrier(n, timeout=20)

    def responder(messages, model):
        barrier.wait()  # every request is inside the server at the same time, or this times out
        return "together"

    results: list[int] = []
    limits = httpx.Limits(max_connections=n)
    with (
        FakeProvider(rpm=None, tpm=None, latency_s=0.0, responder=responder) as fp,
        httpx.Client(timeout=30, limits=limits) as http,
    ):
        threads = [threading.Thread(target=lambda: results.append(post(fp, http).status_code)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert results == [200] * n


def test_bad_requests_and_auth():
    with FakeProvider(rpm=None, tpm=None, api_key="k") as fp, httpx.Client() as http:
        assert post(fp, http).status_code == 401
        auth = {"Authorization": "Bearer k"}
        url = f"{fp.base_url}/chat/completions"
        assert http.post(url, content=b"{not json", headers=auth).status_code == 400
        assert http.post(url, json={"messages": "hi"}, headers=auth).status_code == 400
        assert http.post(url, json={"messages": Q, "max_tokens": 0}, headers=auth).status_code == 400
        assert http.post(f"{fp.base_url}/embeddings", json={}, headers=auth).status_code == 404
        assert http.get(f"{fp.base_url}/nothing").status_code == 404
        assert fp.stats()["bad_requests"] == 4


def test_starts_fast_and_stops_cleanly():
    fp = FakeProvider()
    with pytest.raises(InvalidRequest, match="not running"):
        _ = fp.base_url
    start = time.monotonic()
    fp.start()
    assert time.monotonic() - start < 1.0
    url = fp.base_url
    http = httpx.Client()
    assert post(fp, http).status_code == 200  # a kept-alive connection is open now
    fp.stop()
    fp.stop()
    with pytest.raises(httpx.TransportError):
        http.post(f"{url}/chat/completions", json={"messages": Q})
    http.close()
    assert "stopped" in repr(fp)


@pytest.mark.parametrize(
    "seconds, text", [(0.0123, "13ms"), (0.5, "500ms"), (1.5, "1.5s"), (20.0, "20s"), (360.0, "6m0s"), (61.2, "1m1s")]
)
def test_reset_durations_are_written_like_openai(seconds, text):
    assert format_reset(seconds) == text
