"""LLMClient: OpenAI-compatible chat completions, rate-limited, retried, cached, with fallbacks.

One ``chat()``::

    cache hit? ──────────────────────────────────────────────> Completion(cached=True)
    estimate tokens: prompt ~ sum(ceil(chars/4) + 4 per message) + 3, plus max_tokens
    ┌─> limiter.acquire(tokens=estimate, timeout=time left)   (backpressure, FIFO)
    │   POST {base_url}/chat/completions  (httpx, pooled connections)
    │     200      -> limiter.adjust(actual - estimate), telemetry, Completion
    │     429      -> limiter.pause(Retry-After) so that every caller waits ─┐
    │     5xx, timeout, connection error ───────────────────────────────────┤
    └──── tenacity: wait Retry-After (else exponential backoff with jitter) ┘
          other 4xx -> ProviderError at once; retries used up -> RateLimited /
          ProviderError; time up -> LLMTimeout; then each fallback client in turn

Token accounting follows OpenAI's: a request is charged its prompt tokens plus
``max_tokens`` when it is admitted, so that is what the limiter reserves; when the
answer comes, the prompt estimate is reconciled with ``usage.prompt_tokens``
(without ``max_tokens``, the reserved default is reconciled with the tokens
actually generated). ``input_tokens``/``output_tokens`` limits (Anthropic-style)
are reserved as the prompt estimate and ``max_tokens`` and reconciled with usage.

The API key (argument or ``$OPENAI_API_KEY``) only ever travels in the
Authorization header: it is not logged, stored, pickled, cached, put in events or
shown in an error or repr. A pickled client (on its way to a pool worker) reads
the key from the environment on the other side.

Telemetry, on ``bridge.current_recorder()`` when a trial is recording: samples
``llm.latency_s``, ``llm.prompt_tokens``, ``llm.completion_tokens``,
``llm.attempts`` per answered call; counters ``llm.calls``, ``llm.tokens``,
``llm.rate_limited`` (429s seen), ``llm.retries``, ``llm.errors``,
``llm.fallbacks`` (calls a fallback answered) and ``llm.cache_hits``.

Cache (``cache=True``): the key is ``joblib.hash((model, messages, params))``; the
rows live in ``studyhall_llm_cache`` of the given storage (else the limiter's, else
this process's memory), so every worker shares them. Only temperature-0 calls are
cached, since a sampled answer is meant to differ; ``cache="always"`` caches those too.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import tenacity

from studyhall.bridge._errors import InvalidRequest, LLMTimeout, ProviderError, RateLimited, RateLimitTimeout
from studyhall.bridge._fallbacks import Fallbacks, with_fallbacks
from studyhall.bridge._telemetry import current_recorder

if TYPE_CHECKING:
    import sqlalchemy as sa

    from studyhall.bridge._ratelimit import RateLimiter
    from studyhall.storage import Storage

_log = logging.getLogger("studyhall.bridge.llm")

Messages = Sequence[Mapping[str, Any]]
DEFAULT_MAX_TOKENS = 256  # reserved when a call gives no max_tokens
PER_MESSAGE_TOKENS = 4  # role, name and separators: a little over OpenAI's 3, to err high
REPLY_TOKENS = 3
MAX_HEADER_WAIT_S = 120.0  # a Retry-After beyond this is treated as this
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


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


# ---------------------------------------------------------------- Retry-After

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations (``6m0s``, ``12ms``, ``1.5s``, ``1h2m``) in seconds; None if unparsable."""
    text = text.strip()
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        value, unit = float(m.group(1)), m.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = m.end()
    if pos != len(text):
        try:
            return float(text)  # a bare number of seconds
        except ValueError:
            return None
    return total


def _parse_timestamp(text: str) -> float | None:
    import datetime

    try:
        ts = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.UTC)
    return ts.timestamp()


def retry_delay(headers: Mapping[str, str], now: float | None = None, *, resets: bool = True) -> float | None:
    """Seconds a provider asked us to wait, from its response headers (None when it did not say).

    In order: ``retry-after-ms``; ``retry-after`` (seconds or an HTTP date);
    Anthropic's ``anthropic-ratelimit-*-reset`` RFC 3339 timestamps; OpenAI's
    ``x-ratelimit-reset-requests``/``-tokens`` durations. Of several resets, those
    of exhausted buckets (remaining 0) decide, the latest of them; else the earliest.
    ``resets=False`` reads only the Retry-After forms (for a 5xx, where the
    rate-limit headers describe the buckets, not the failure).
    """
    h = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in h:
        value = h["retry-after"].strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now)
    if not resets:
        return None
    for prefix, suffix, parse in (
        ("anthropic-ratelimit-", "-reset", lambda v: None if (t := _parse_timestamp(v)) is None else t - now),
        ("x-ratelimit-reset-", "", parse_duration),
    ):
        exhausted: list[float] = []
        others: list[float] = []
        for key, value in h.items():
            if not (key.startswith(prefix) and key.endswith(suffix)):
                continue
            if prefix.startswith("anthropic"):
                bucket = key[len(prefix) : -len(suffix)]
                remaining = h.get(f"{prefix}{bucket}-remaining")
            else:
                bucket = key[len(prefix) :]
                remaining = h.get(f"x-ratelimit-remaining-{bucket}")
            seconds = parse(value)
            if seconds is None:
                continue
            (exhausted if remaining is not None and remaining.strip() == "0" else others).append(max(0.0, seconds))
        if exhausted:
            return max(exhausted)
        if others:
            return min(others)
    return None


# ---------------------------------------------------------------- results


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


class _Retryable(Exception):
    """One failed attempt worth retrying (internal; translated before it leaves chat())."""

    def __init__(self, message: str, status: int | None, delay: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.delay = delay


class _Stop(Exception):
    """An attempt that must not be retried, carrying the error to raise."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _close_in_owner(http: httpx.Client, pid: int) -> None:
    if os.getpid() == pid:
        http.close()


class _Secret:
    """Holds the API key; its repr is masked, so vars(), tracebacks with locals and logs never show it."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Secret('***')" if self.value else "_Secret(None)"

    def __reduce__(self) -> Any:
        raise TypeError("an API key is never pickled; the other side reads it from its environment")


# ---------------------------------------------------------------- cache


_memory_cache: dict[str, dict[str, Any]] = {}
_memory_cache_lock = threading.Lock()


def _cache_get(store: Storage | None, key: str) -> dict[str, Any] | None:
    if store is None:
        with _memory_cache_lock:
            return _memory_cache.get(key)
    import sqlalchemy as sa

    from studyhall.storage import tables

    t = tables.llm_cache

    def read(conn: sa.Connection) -> dict[str, Any] | None:
        row = conn.execute(sa.select(t.c.response).where(t.c.key == key)).first()
        return None if row is None else dict(row.response)

    return store.transaction(read)


def _cache_put(store: Storage | None, key: str, model: str, response: dict[str, Any]) -> None:
    if store is None:
        with _memory_cache_lock:
            _memory_cache[key] = response
        return
    from studyhall.storage import tables
    from studyhall.storage._sql import insert_ignore

    store.transaction(
        lambda conn: insert_ignore(
            conn, tables.llm_cache, [{"key": key, "model": model[:255], "response": response, "created_at": time.time()}]
        )
    )


# ---------------------------------------------------------------- the client


class LLMClient:
    """An OpenAI-compatible chat client that waits on a RateLimiter, retries and falls back.

    Args:
        model: the model to ask for.
        base_url: the API root (``https://host/v1``); default ``$OPENAI_BASE_URL``,
            else ``https://api.openai.com/v1``.
        api_key: the bearer token; default ``$OPENAI_API_KEY`` (``api_key_env``).
            Never logged, stored, pickled or shown.
        limiter: a :class:`RateLimiter` every call waits on (None: no limit).
        timeout: seconds one ``chat()`` may take in all: limiter waits, retries, backoff.
        max_retries: retries after the first attempt on 429, 5xx, timeouts and
            connection errors.
        fallbacks: clients tried in turn when this one's retries are used up.
        cache: False; True to reuse answers to identical temperature-0 calls;
            ``"always"`` to reuse answers whatever the temperature.
        storage: where the cache lives (a Storage or URL); default the limiter's
            storage, else this process's memory.
        attempt_timeout: seconds one HTTP attempt may take (default: ``timeout``).
        max_connections: size of the HTTP connection pool.
        backoff: without a Retry-After, the first retry waits up to this many
            seconds (full jitter), doubling each retry up to 30 s.
        api_key_env: the environment variable the key is read from.

    Example:
        >>> lm = LLMClient("gpt-4o-mini", limiter=RateLimiter("openai", rpm=500, tpm=200_000))  # doctest: +SKIP
        >>> lm.chat([{"role": "user", "content": "2+2?"}], max_tokens=16, temperature=0.0).text  # doctest: +SKIP
        '4'
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        limiter: RateLimiter | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        fallbacks: Sequence[LLMClient] = (),
        cache: bool | Literal["always"] = False,
        storage: Storage | str | None = None,
        attempt_timeout: float | None = None,
        max_connections: int = 64,
        backoff: float = 0.5,
        api_key_env: str = "OPENAI_API_KEY",
    ) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidRequest(f"LLMClient model must be a non-empty string; got {model!r}")
        if not timeout > 0:
            raise InvalidRequest(f"LLMClient timeout={timeout!r} must be a positive number of seconds")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequest(f"LLMClient max_retries={max_retries!r} must be an int >= 0")
        if cache not in (False, True, "always"):
            raise InvalidRequest(f"LLMClient cache={cache!r} must be False, True or 'always'")
        bad = [f for f in fallbacks if not isinstance(f, LLMClient)]
        if bad:
            raise InvalidRequest(f"fallbacks must be LLMClient objects; got {type(bad[0]).__name__}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.limiter = limiter
        self.timeout = float(timeout)
        self.attempt_timeout = float(attempt_timeout) if attempt_timeout else None
        self.max_retries = max_retries
        self.fallbacks: tuple[LLMClient, ...] = tuple(fallbacks)
        self.cache = cache
        self.max_connections = max_connections
        self.backoff = float(backoff)
        self.api_key_env = api_key_env
        self._cache_storage: Storage | None = None
        if storage is not None:
            from studyhall.storage import connect

            self._cache_storage = connect(storage)
        elif limiter is not None and limiter.storage is not None:
            self._cache_storage = limiter.storage
        self._api_key = _Secret(api_key if api_key is not None else os.environ.get(api_key_env))
        self._setup()

    def _setup(self) -> None:
        self._http: httpx.Client | None = None
        self._http_pid = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle, pickling

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_http", "_http_pid", "_lock", "_api_key")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._api_key = _Secret(os.environ.get(self.api_key_env))
        self._setup()

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None or self._http_pid != os.getpid():
                limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
                self._http = httpx.Client(limits=limits, timeout=self.timeout)
                self._http_pid = os.getpid()
                # A client dropped without close() still closes its sockets when collected
                # (but a forked child never closes the connections its parent still uses).
                weakref.finalize(self, _close_in_owner, self._http, self._http_pid)
            return self._http

    def close(self) -> None:
        """Close the pooled HTTP connections (the client reopens them if used again)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()
        for fb in self.fallbacks:
            fb.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ calls

    def chat(
        self,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **params: Any,
    ) -> Completion:
        """Ask for one chat completion; waits on the limiter, retries, then tries the fallbacks.

        Extra keyword arguments (``top_p``, ``stop``, ``seed``...) go into the request body.

        Raises:
            ProviderError: a non-retryable 4xx (status and the provider's message attached).
            RateLimited: 429s outlasted ``max_retries``.
            LLMTimeout: ``timeout`` ran out (waiting on the limiter included).
            FallbackError: with fallbacks, every client failed (``.errors`` has each cause).
            InvalidRequest: malformed messages, or a request no limiter bucket can ever hold.
        """
        if not self.fallbacks:
            return self._chat(messages, max_tokens, temperature, params)
        chain: Fallbacks[Completion] = with_fallbacks(
            lambda: self._chat(messages, max_tokens, temperature, params),
            *[
                (lambda fb=fb: fb.chat(messages, max_tokens=max_tokens, temperature=temperature, **params))
                for fb in self.fallbacks
            ],
            on=(ProviderError,),
            names=[self.model, *(fb.model for fb in self.fallbacks)],
        )
        served = chain.call()
        rec = current_recorder()
        if rec is not None and served.index > 0:
            rec.add("llm.fallbacks")
        return served.value

    def chat_many(
        self, conversations: Sequence[Messages], *, concurrency: int = 8, **params: Any
    ) -> list[Completion | Exception]:
        """``chat()`` each conversation on a thread pool; results in order, an exception in place of a failure.

        Each call runs in a copy of the caller's context, so the trial's recorder
        and ``services`` overrides are seen in the threads.
        """
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidRequest(f"chat_many concurrency={concurrency!r} must be an int >= 1")

        def one(messages: Messages) -> Completion | Exception:
            try:
                return self.chat(messages, **params)
            except Exception as exc:  # noqa: BLE001 - returned in place, as documented
                return exc

        items = list(conversations)
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="studyhall-llm") as ex:
            futures = [ex.submit(contextvars.copy_context().run, one, m) for m in items]
            return [f.result() for f in futures]

    # ------------------------------------------------------------ internals

    def _scrub(self, text: str) -> str:
        key = self._api_key.value
        # A key of a few characters is no secret worth hiding and would mangle
        # ordinary words ("sim" in "sim-small"); real keys are long.
        if key and len(key) >= 8 and key in text:
            text = text.replace(key, "***")
        return text

    def _check_messages(self, messages: Messages) -> list[dict[str, Any]]:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise InvalidRequest(
                "messages must be a non-empty list of {'role': ..., 'content': ...} dicts; "
                f"got {type(messages).__name__}"
            )
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise InvalidRequest(f"messages[{i}] must be a dict with a 'role' (and 'content'); got {m!r:.80}")
            out.append(dict(m))
        return out

    def _chat(
        self, messages: Messages, max_tokens: int | None, temperature: float | None, params: dict[str, Any]
    ) -> Completion:
        msgs = self._check_messages(messages)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequest(f"max_tokens={max_tokens!r} must be an int >= 1")
        body: dict[str, Any] = {"model": self.model, "messages": msgs, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        rec = current_recorder()

        use_cache = self.cache == "always" or (self.cache is True and temperature == 0)
        key = ""
        if use_cache:
            import joblib

            key = str(joblib.hash((self.model, msgs, {k: v for k, v in body.items() if k not in ("model", "messages")})))
            hit = _cache_get(self._cache_storage, key)
            if hit is not None:
                if rec is not None:
                    rec.add("llm.cache_hits")
                return Completion(**{**hit, "latency_s": 0.0, "attempts": 0, "waited_s": 0.0, "cached": True})

        est_prompt = estimate_prompt_tokens(msgs)
        est_out = max_tokens or DEFAULT_MAX_TOKENS
        start = time.monotonic()
        deadline = start + self.timeout
        if rec is not None:
            rec.add("llm.calls")
        state = {"attempts": 0, "rate_limited": 0}

        def attempt() -> tuple[dict[str, Any], float]:
            state["attempts"] += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Stop(self._timeout_error(state["attempts"] - 1, None))
            if self.limiter is not None:
                try:
                    self.limiter.acquire(
                        tokens=est_prompt + est_out, input_tokens=est_prompt, output_tokens=est_out, timeout=left
                    )
                except RateLimitTimeout as exc:
                    raise _Stop(self._timeout_error(state["attempts"] - 1, exc)) from exc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Stop(self._timeout_error(state["attempts"] - 1, None))
            per_try = min(left, self.attempt_timeout or left)
            key = self._api_key.value
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            http = self._client()
            t0 = time.monotonic()
            try:
                resp = http.post(f"{self.base_url}/chat/completions", json=body, headers=headers, timeout=per_try)
            except httpx.TimeoutException as exc:
                raise _Retryable(f"no answer within {per_try:.1f}s ({type(exc).__name__})", None, None) from exc
            except httpx.TransportError as exc:
                raise _Retryable(f"connection failed ({type(exc).__name__}: {self._scrub(str(exc))[:200]})", None, None) from exc
            latency = time.monotonic() - t0
            if resp.status_code == 200:
                try:
                    return resp.json(), latency
                except ValueError as exc:
                    raise _Retryable("the provider answered 200 with a body that is not JSON", 200, None) from exc
            message = self._provider_message(resp)
            should_retry = resp.headers.get("x-should-retry", "").lower()
            if resp.status_code == 429:
                state["rate_limited"] += 1
                if rec is not None:
                    rec.add("llm.rate_limited")
                delay = retry_delay(resp.headers)
                if should_retry != "false":
                    if self.limiter is not None:
                        self.limiter.pause(min(delay if delay is not None else 1.0, MAX_HEADER_WAIT_S))
                    raise _Retryable(message, 429, delay)
                raise _Stop(RateLimited(f"{self.model} at {self.base_url} answered 429: {message}", status=429, model=self.model))
            if (resp.status_code in RETRYABLE_STATUS or resp.status_code >= 500) and should_retry != "false":
                raise _Retryable(message, resp.status_code, retry_delay(resp.headers, resets=False))
            raise _Stop(
                ProviderError(
                    f"{self.model} at {self.base_url} answered {resp.status_code}: {message}; "
                    "this is not retried (check the request, the model name and the API key)",
                    status=resp.status_code,
                    model=self.model,
                )
            )

        try:
            for tried in tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_Retryable),
                wait=self._wait,
                stop=self._stop(deadline),
                reraise=True,
                before_sleep=self._log_retry,
            ):
                with tried:
                    data, latency = attempt()
        except _Stop as stop:
            if rec is not None:
                rec.add("llm.errors")
                rec.add("llm.retries", max(0, state["attempts"] - 1))
            raise stop.error from stop.__cause__
        except _Retryable as exc:
            if rec is not None:
                rec.add("llm.errors")
                rec.add("llm.retries", max(0, state["attempts"] - 1))
            raise self._exhausted(exc, state["attempts"], deadline) from (exc.__cause__ or exc)

        completion = self._completion(data, latency, state["attempts"], time.monotonic() - start - latency)
        if self.limiter is not None:
            charged_out = max_tokens if max_tokens is not None else completion.completion_tokens
            d_tokens = completion.prompt_tokens + charged_out - (est_prompt + est_out)
            d_in = completion.prompt_tokens - est_prompt
            d_out = completion.completion_tokens - est_out
            if d_tokens or d_in or d_out:
                self.limiter.adjust(tokens=d_tokens, input_tokens=d_in, output_tokens=d_out)
        if rec is not None:
            rec.observe("llm.latency_s", completion.latency_s)
            rec.observe("llm.prompt_tokens", completion.prompt_tokens)
            rec.observe("llm.completion_tokens", completion.completion_tokens)
            rec.observe("llm.attempts", completion.attempts)
            rec.add("llm.tokens", completion.total_tokens)
            if completion.attempts > 1:
                rec.add("llm.retries", completion.attempts - 1)
        if use_cache:
            saved = asdict(completion)
            for k in ("latency_s", "attempts", "waited_s", "cached"):
                saved.pop(k)
            _cache_put(self._cache_storage, key, self.model, saved)
        return completion

    def _provider_message(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
            err = data.get("error", data) if isinstance(data, dict) else data
            msg = err.get("message") if isinstance(err, dict) else None
            text = str(msg if msg is not None else err)
        except ValueError:
            text = resp.text
        return self._scrub(" ".join(text.split())[:500]) or resp.reason_phrase

    def _completion(self, data: dict[str, Any], latency: float, attempts: int, waited: float) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice.get("message", {}).get("content") or ""
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(
                f"{self.model} at {self.base_url} answered 200 without choices[0].message; "
                "is base_url an OpenAI-compatible /v1 root?",
                status=200,
                model=self.model,
            ) from exc
        return Completion(
            text=str(text),
            model=str(data.get("model") or self.model),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
            attempts=attempts,
            finish_reason=choice.get("finish_reason"),
            waited_s=max(0.0, waited),
        )

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay: float | None = getattr(exc, "delay", None)
        if delay is not None:
            delay = min(delay, MAX_HEADER_WAIT_S)
            if getattr(exc, "status", None) == 429 and self.limiter is not None:
                return 0.0  # the limiter was paused for it: the next acquire() waits
            return delay * (1.0 + 0.1 * random.random())
        # Exponential backoff with full jitter: up to backoff, 2*backoff, ... capped at 30s.
        return random.uniform(0.0, min(30.0, self.backoff * 2 ** (retry_state.attempt_number - 1)))

    def _stop(self, deadline: float) -> Any:
        max_attempts = self.max_retries + 1

        def stop(retry_state: tenacity.RetryCallState) -> bool:
            if retry_state.attempt_number >= max_attempts:
                return True
            return time.monotonic() + retry_state.upcoming_sleep >= deadline

        return stop

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        status = getattr(exc, "status", None)
        # A 429 is expected backpressure (the limiter pauses everyone); only other
        # failures deserve a warning on the user's terminal.
        _log.log(
            logging.INFO if isinstance(exc, RateLimited) or status == 429 else logging.WARNING,
            "%s: attempt %d failed (%s%s); retrying in %.2fs",
            self.model,
            retry_state.attempt_number,
            f"HTTP {status}: " if status else "",
            str(exc)[:200],
            retry_state.upcoming_sleep,
        )

    def _timeout_error(self, attempts: int, cause: Exception | None) -> LLMTimeout:
        if isinstance(cause, RateLimitTimeout):
            why = " waiting for the rate limiter"
        elif cause is not None:
            why = f" (last attempt: {cause})"
        else:
            why = ""
        return LLMTimeout(
            f"{self.model} at {self.base_url}: no answer within timeout={self.timeout:g}s{why} "
            f"after {attempts} attempt(s); raise timeout= or lower the load",
            model=self.model,
        )

    def _exhausted(self, exc: _Retryable, attempts: int, deadline: float) -> ProviderError:
        if attempts <= self.max_retries or time.monotonic() >= deadline:
            # Stopped before the retries ran out: the next wait would have passed the deadline.
            return self._timeout_error(attempts, exc)
        what = f"{self.model} at {self.base_url}"
        if exc.status == 429:
            return RateLimited(
                f"{what} kept answering 429 through {attempts} attempts ({exc}); lower the "
                "limiter's rpm/tpm to the provider's limits or raise max_retries",
                status=429,
                model=self.model,
            )
        status = f"HTTP {exc.status}" if exc.status else "no answer"
        return ProviderError(
            f"{what} failed {attempts} attempts ({status}: {exc}); the provider may be down, retry later",
            status=exc.status,
            model=self.model,
        )


__all__ = ["Completion", "LLMClient", "estimate_prompt_tokens", "parse_duration", "retry_delay"]
