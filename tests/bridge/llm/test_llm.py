"""LLMClient against FakeProvider: retries, Retry-After, timeouts, errors, fallbacks, cache, telemetry, secrecy."""

from __future__ import annotations

import email.utils
import logging
import pickle
import threading
import uuid

import pytest
import sqlalchemy as sa

from studyhall.bridge import (
    Completion,
    FakeProvider,
    FallbackError,
    InvalidRequest,
    Limit,
    LLMClient,
    LLMTimeout,
    ProviderError,
    RateLimited,
    RateLimiter,
    StudyhallError,
    recording,
)
from studyhall.bridge.llm import estimate_prompt_tokens, parse_duration, retry_delay
from studyhall.storage import tables

Q = [{"role": "user", "content": "2+2?"}]


def client(fp: FakeProvider, **kw) -> LLMClient:
    kw.setdefault("api_key", "test-key")
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 20.0)
    return LLMClient(kw.pop("model", "fake-model"), base_url=fp.base_url, **kw)


# ---------------------------------------------------------------- Retry-After parsing


def test_retry_after_ms_wins_over_retry_after():
    assert retry_delay({"retry-after-ms": "250", "retry-after": "3"}) == pytest.approx(0.25)
    assert retry_delay({"Retry-After": "3"}) == 3.0
    assert retry_delay({"retry-after": "1.5"}) == 1.5


def test_retry_after_http_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 5, usegmt=True)
    assert retry_delay({"retry-after": date}, now=now) == pytest.approx(5.0)
    assert retry_delay({"retry-after": email.utils.formatdate(now - 50, usegmt=True)}, now=now) == 0.0


@pytest.mark.parametrize(
    "text, seconds",
    [("6m0s", 360.0), ("12ms", 0.012), ("1.5s", 1.5), ("1h2m3.5s", 3723.5), ("20s", 20.0), ("0.25", 0.25)],
)
def test_openai_reset_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1m-2s"])
def test_unparsable_durations(text):
    assert parse_duration(text) is None


def test_openai_reset_headers_pick_the_exhausted_bucket():
    headers = {
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_delay(headers) == 360.0
    # Nothing exhausted: the earliest reset.
    assert retry_delay({**headers, "x-ratelimit-remaining-tokens": "5"}) == 1.0
    # For a 5xx the bucket headers are not a retry hint.
    assert retry_delay(headers, resets=False) is None


def test_anthropic_reset_timestamps():
    now = 1_700_000_000.0
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:27Z",  # now + 7 s
        "anthropic-ratelimit-tokens-remaining": "1000",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:14:20+00:00",
    }
    assert retry_delay(headers, now=now) == pytest.approx(7.0)
    assert retry_delay({}, now=now) is None


def test_token_estimate_heuristic():
    msgs = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 41}]
    assert estimate_prompt_tokens(msgs) == (10 + 4) + (11 + 4) + 3
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcd" * 3}]}]
    assert estimate_prompt_tokens(parts) == 3 + 4 + 3


# ---------------------------------------------------------------- calls


def test_chat_returns_a_completion_with_usage():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as fp:
        with client(fp) as lm:
            c = lm.chat(Q, max_tokens=16, temperature=0.0)
    assert isinstance(c, Completion)
    assert c.text == "fake answer to: 2+2?" and c.model == "fake-model"
    assert c.prompt_tokens == 7 and c.completion_tokens == 5 and c.total_tokens == 12
    assert c.attempts == 1 and c.latency_s > 0 and not c.cached


def test_retries_500_and_503_until_success():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, error_rate=0.4, seed=3) as fp:
        with client(fp, max_retries=8) as lm:
            out = [lm.chat(Q, max_tokens=8) for _ in range(12)]
        stats = fp.stats()
    assert stats["server_errors"] > 0
    assert stats["completed"] == 12
    assert sum(c.attempts for c in out) == stats["requests"]
    assert max(c.attempts for c in out) > 1


def test_server_errors_exhaust_retries_into_provider_error():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, error_rate=1.0) as fp:
        with client(fp, max_retries=2) as lm, pytest.raises(ProviderError) as info:
            lm.chat(Q)
        assert fp.stats()["requests"] == 3
    assert info.value.status in (500, 503) and not isinstance(info.value, RateLimited)
    assert "3 attempts" in str(info.value)


def test_429_pauses_the_limiter_so_the_retry_is_not_rejected_again():
    with FakeProvider(rpm=1, tpm=None, per=1.0, latency_s=0.0) as fp:
        # A limiter far looser than the provider: only the 429 can hold the retry back.
        lim = RateLimiter(f"loose-{uuid.uuid4().hex[:8]}", rpm=10_000)
        with client(fp, limiter=lim) as lm, recording() as rec:
            lm.chat(Q)
            second = lm.chat(Q)
        stats = fp.stats()
    assert second.attempts == 2 and second.waited_s > 0.5
    # The retry waited out the pause (Retry-After) instead of hammering the provider.
    assert stats["rate_limited"] == 1 and stats["completed"] == 2
    assert rec.counters["llm.rate_limited"] == 1 and rec.counters["llm.retries"] == 1


def test_429_without_retries_left_raises_rate_limited():
    with FakeProvider(rpm=1, tpm=None, per=60.0, latency_s=0.0) as fp:
        with client(fp, max_retries=0) as lm:
            lm.chat(Q)
            with pytest.raises(RateLimited) as info:
                lm.chat(Q)
    assert info.value.status == 429 and "429" in str(info.value)


def test_request_larger_than_the_providers_tpm_is_not_retried():
    with FakeProvider(rpm=None, tpm=100, latency_s=0.0) as fp:
        with client(fp) as lm, pytest.raises(RateLimited, match="Request too large"):
            lm.chat(Q, max_tokens=200)
        assert fp.stats()["requests"] == 1


def test_slow_provider_gives_llm_timeout():
    release = threading.Event()
    with FakeProvider(rpm=None, tpm=None, latency_s=lambda m, model: 0.0 if release.wait(10) else 0.0) as fp:
        try:
            with client(fp, timeout=0.3) as lm, pytest.raises(LLMTimeout) as info:
                lm.chat(Q)
            assert isinstance(info.value, TimeoutError) and isinstance(info.value, ProviderError)
            # Per-attempt timeouts are retried until the overall timeout.
            with client(fp, timeout=1.0, attempt_timeout=0.15) as lm2, pytest.raises(LLMTimeout):
                lm2.chat(Q)
            assert fp.stats()["requests"] >= 3
        finally:
            release.set()


def test_limiter_wait_beyond_timeout_gives_llm_timeout():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as fp:
        lim = RateLimiter(f"tight-{uuid.uuid4().hex[:8]}", limits=[Limit(requests=1, per=60.0)])
        with client(fp, limiter=lim, timeout=0.2) as lm:
            lm.chat(Q)
            with pytest.raises(LLMTimeout, match="rate limiter"):
                lm.chat(Q)
        assert fp.stats()["requests"] == 1


def test_other_4xx_are_not_retried():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key="right-key") as fp:
        with client(fp, api_key="wrong-key") as lm, pytest.raises(ProviderError) as info:
            lm.chat(Q)
        assert info.value.status == 401 and "Incorrect API key" in str(info.value)
        with client(fp, api_key="right-key") as lm, pytest.raises(ProviderError) as bad:
            lm.chat(Q, stream=True)  # extra params go into the body; the fake refuses streaming
        assert bad.value.status == 400 and "stream" in str(bad.value)
        assert fp.stats()["requests"] == 2


def test_bad_messages_are_invalid_requests():
    with FakeProvider(rpm=None, tpm=None) as fp, client(fp) as lm:
        for bad in ("hello", [], [{"content": "no role"}]):
            with pytest.raises(InvalidRequest):
                lm.chat(bad)
        with pytest.raises(InvalidRequest):
            lm.chat(Q, max_tokens=0)
        assert fp.stats()["requests"] == 0


def test_usage_reconciles_the_limiters_reservation():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as fp:
        lim = RateLimiter(f"rec-{uuid.uuid4().hex[:8]}", limits=[Limit(tokens=10_000, per=36_000)])
        with client(fp, limiter=lim) as lm:
            for n in (10, 200, 999):
                lm.chat([{"role": "system", "content": "s" * n}, *Q], max_tokens=50)
        charged = fp.stats()["tokens"]  # prompt tokens + max_tokens, as OpenAI counts
    assert 10_000 - lim.available()["tokens/36000s"] == pytest.approx(charged, abs=2)


# ---------------------------------------------------------------- fallbacks


def test_fallback_answers_when_the_primary_is_exhausted():
    with (
        FakeProvider(rpm=None, tpm=None, latency_s=0.0, error_rate=1.0) as bad,
        FakeProvider(rpm=None, tpm=None, latency_s=0.0) as good,
    ):
        backup = client(good, model="backup-model")
        primary = client(bad, model="primary-model", max_retries=1, fallbacks=[backup])
        with recording() as rec:
            c = primary.chat(Q)
        assert c.model == "backup-model"
        assert rec.counters["llm.fallbacks"] == 1 and rec.counters["llm.errors"] == 1
        assert bad.stats()["requests"] == 2

        dead = client(bad, model="also-down", max_retries=0)
        chain = client(bad, model="primary-model", max_retries=0, fallbacks=[dead])
        with pytest.raises(FallbackError) as info:
            chain.chat(Q)
        primary.close()
        chain.close()
    err = info.value
    assert isinstance(err, StudyhallError) and len(err.errors) == 2
    assert all(isinstance(e, ProviderError) for e in err.errors)
    assert err.__cause__ is err.errors[-1]
    assert "primary-model" in str(err) and "also-down" in str(err)


# ---------------------------------------------------------------- chat_many, telemetry


def test_chat_many_keeps_order_and_puts_errors_in_place():
    def responder(messages, model):
        text = messages[-1]["content"]
        if text == "boom":
            raise RuntimeError("cannot answer boom")
        return text.upper()

    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    convs[3] = [{"role": "user", "content": "boom"}]
    convs[7] = "not a conversation"
    with FakeProvider(rpm=None, tpm=None, latency_s=(0.0, 0.02), responder=responder) as fp:
        with client(fp, max_retries=0) as lm, recording() as rec:
            out = lm.chat_many(convs, concurrency=4, max_tokens=8)
    assert isinstance(out[3], ProviderError) and out[3].status == 500
    assert isinstance(out[7], InvalidRequest)
    assert [c.text for i, c in enumerate(out) if i not in (3, 7)] == [f"Q{i}" for i in range(10) if i not in (3, 7)]
    # The recorder of the calling context was seen in every pool thread.
    assert rec.counters["llm.calls"] == 9 and len(rec.samples["llm.latency_s"]) == 8
    assert lm.chat_many([]) == []
    with pytest.raises(InvalidRequest):
        lm.chat_many(convs, concurrency=0)


def test_recorder_receives_llm_telemetry():
    with FakeProvider(rpm=None, tpm=None, latency_s=0.01) as fp, client(fp) as lm:
        with recording() as rec:
            a = lm.chat(Q, max_tokens=16)
            b = lm.chat([{"role": "user", "content": "a longer question " * 5}], max_tokens=16)
        outside = lm.chat(Q)  # no recorder: nothing recorded, nothing breaks
    assert outside.text
    s, c = rec.samples, rec.counters
    assert s["llm.prompt_tokens"] == [a.prompt_tokens, b.prompt_tokens]
    assert s["llm.completion_tokens"] == [a.completion_tokens, b.completion_tokens]
    assert s["llm.attempts"] == [1.0, 1.0]
    assert s["llm.latency_s"] == [a.latency_s, b.latency_s] and min(s["llm.latency_s"]) >= 0.01
    assert c["llm.calls"] == 2 and c["llm.tokens"] == a.total_tokens + b.total_tokens
    assert "llm.rate_limited" not in c and "llm.retries" not in c


# ---------------------------------------------------------------- cache


def test_cache_hits_only_for_deterministic_calls(studyhall_storage):
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as fp:
        lm = client(fp, cache=True, storage=studyhall_storage)
        first = lm.chat(Q, max_tokens=16, temperature=0.0)
        with recording() as rec:
            again = lm.chat(Q, max_tokens=16, temperature=0.0)
        assert fp.stats()["requests"] == 1
        assert again.cached and again.attempts == 0 and again.text == first.text
        assert again.prompt_tokens == first.prompt_tokens and rec.counters == {"llm.cache_hits": 1.0}
        # Another client (another worker) on the same storage shares the cache.
        assert client(fp, cache=True, storage=studyhall_storage.url).chat(Q, max_tokens=16, temperature=0.0).cached
        # Misses: other parameters, other messages, sampling temperature, default temperature.
        lm.chat(Q, max_tokens=17, temperature=0.0)
        lm.chat([{"role": "user", "content": "3+3?"}], max_tokens=16, temperature=0.0)
        lm.chat(Q, max_tokens=16, temperature=0.7)
        lm.chat(Q, max_tokens=16, temperature=0.7)
        lm.chat(Q, max_tokens=16)
        assert fp.stats()["requests"] == 6
        # cache="always" reuses sampled answers too.
        always = client(fp, cache="always", storage=studyhall_storage)
        always.chat(Q, max_tokens=16, temperature=0.7)
        assert always.chat(Q, max_tokens=16, temperature=0.7).cached
        assert fp.stats()["requests"] == 7
        # Without cache nothing is reused.
        assert not client(fp).chat(Q, max_tokens=16, temperature=0.0).cached
        for x in (lm, always):
            x.close()
    rows = studyhall_storage.transaction(lambda c: c.execute(sa.select(tables.llm_cache)).all())
    assert len(rows) == 4 and {r.model for r in rows} == {"fake-model"}


def test_cache_uses_the_limiters_storage(studyhall_storage):
    lim = RateLimiter(f"c-{uuid.uuid4().hex[:8]}", rpm=1000, storage=studyhall_storage)
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as fp, client(fp, limiter=lim, cache=True) as lm:
        lm.chat(Q, temperature=0)
        assert lm.chat(Q, temperature=0).cached
    assert studyhall_storage.transaction(
        lambda c: c.execute(sa.select(sa.func.count()).select_from(tables.llm_cache)).scalar()
    )


# ---------------------------------------------------------------- pickling and secrecy


def test_client_pickles_without_its_key_and_rebuilds_http(monkeypatch):
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key="env-key") as fp:
        monkeypatch.setenv("OPENAI_API_KEY", "env-key")
        lm = LLMClient("fake-model", base_url=fp.base_url, limiter=RateLimiter(f"p-{uuid.uuid4().hex[:8]}", rpm=100))
        lm.chat(Q)
        copy = pickle.loads(pickle.dumps(lm))
        assert copy.limiter is not None and copy.limiter.limits == lm.limiter.limits
        assert copy.chat(Q).text  # its own HTTP client, the key from the environment
        lm.close()
        copy.close()


def test_api_key_never_leaks(caplog, studyhall_storage):
    secret = f"sk-test-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with (
        FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key=secret) as fp,
        FakeProvider(rpm=None, tpm=None, latency_s=0.0, error_rate=1.0) as down,
    ):
        lim = RateLimiter(f"k-{uuid.uuid4().hex[:8]}", rpm=1000, storage=studyhall_storage)
        good = LLMClient("fake-model", base_url=fp.base_url, api_key=secret, limiter=lim, cache=True)
        with recording() as rec:
            good.chat(Q, temperature=0)
            good.chat(Q, temperature=0)
        failing = LLMClient(
            "down", base_url=down.base_url, api_key=secret, max_retries=2, backoff=0.01, fallbacks=[good]
        )
        assert failing.chat(Q, temperature=0.5).model == "fake-model"
        wrong = LLMClient("fake-model", base_url=fp.base_url, api_key=secret[::-1])
        exhausted = LLMClient("down", base_url=down.base_url, api_key=secret, max_retries=1, backoff=0.01)
        for call in (lambda: good.chat(Q, stream=True), lambda: exhausted.chat(Q), lambda: wrong.chat(Q)):
            with pytest.raises(StudyhallError) as info:
                call()
            seen += [str(info.value), repr(info.value), repr(info.value.__cause__)]
        seen += [repr(good), str(vars(good)), repr(failing), repr(rec), repr(wrong)]
        blob = pickle.dumps(failing)
        for x in (good, failing, wrong, exhausted):
            x.close()
    assert secret.encode() not in blob
    rows = studyhall_storage.transaction(lambda c: c.execute(sa.select(tables.llm_cache)).all())
    assert rows
    seen += [repr(r) for r in rows]
    assert "retrying" in caplog.text  # the retries were logged...
    for text in [caplog.text, *seen]:
        assert secret not in text  # ...and nothing anywhere shows the key


def test_a_short_key_does_not_mangle_model_names_in_messages():
    # Redacting "sim" would turn "sim-small" into "***-small" in every error message.
    lm = LLMClient("sim-small", base_url="http://127.0.0.1:9/v1", api_key="sim")
    assert lm._scrub("Rate limit reached for sim-small") == "Rate limit reached for sim-small"
    real = LLMClient("sim-small", base_url="http://127.0.0.1:9/v1", api_key="sk-0123456789abcdef")
    assert real._scrub("bad key sk-0123456789abcdef") == "bad key ***"
