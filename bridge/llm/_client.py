"""LLMClient: OpenAI-compatible chat completions, rate-limited, retried, cached, with fallbacks.

One ``chat()``::

    a cached answer? (_cache.py) ─────────────────────────────> Completion(cached=True)
    ChatCall (_call.py): wait on the limiter for the tokens reserved (_tokens.py),
        POST, retry what is worth retrying (_retry.py) ────────> Completion
    a ProviderError with fallbacks? each fallback client in turn; all failed -> FallbackError

The API key (argument or ``$OPENAI_API_KEY``) only ever travels in the
Authorization header: it is not logged, stored, pickled, cached, put in events or
shown in an error or repr. A pickled client carries only a random id for it; a
WorkerPool sends the key itself to its workers over their sockets (memory only), and
a client that had a key but cannot find it where it was unpickled refuses to send.

Telemetry, on ``bridge.current_recorder()`` when a trial is recording: samples
``llm.latency_s``, ``llm.prompt_tokens``, ``llm.completion_tokens``,
``llm.attempts`` per answered call; counters ``llm.calls``, ``llm.tokens``,
``llm.rate_limited`` (429s seen), ``llm.retries``, ``llm.errors``,
``llm.fallbacks`` (calls a fallback answered) and ``llm.cache_hits``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
import weakref
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from studyhall.bridge._errors import InvalidRequest, ProviderError
from studyhall.bridge._fallbacks import Fallbacks, with_fallbacks
from studyhall.bridge._telemetry import current_recorder
from studyhall.bridge.llm import _cache
from studyhall.bridge.llm._cache import CacheMode
from studyhall.bridge.llm._call import ChatCall
from studyhall.bridge.llm._completion import Completion, from_cache, to_cache
from studyhall.bridge.llm._tokens import Messages
from studyhall.bridge.pool import _secrets

if TYPE_CHECKING:
    from studyhall.bridge.ratelimit import RateLimiter
    from studyhall.storage import Storage


def _close_in_owner(http: httpx.Client, pid: int) -> None:
    if os.getpid() == pid:
        http.close()


class _Secret:
    """Holds the API key; its repr is masked, so vars(), tracebacks with locals and logs never show it.

    The plain key is never bound to a local variable anywhere: ``authorize`` writes
    it straight into the request's headers (whose repr httpx masks) and ``scrub``
    compares against the attribute. A traceback that captures locals (Sentry,
    ``rich.traceback`` with ``show_locals``) thus sees only this masked object.

    A key is registered with the pool's secrets (``bridge/pool/_secrets.py``): a
    pickled client carries only the random ``id``, and a ``WorkerPool`` hands the key
    to its workers over their sockets, in memory.
    """

    __slots__ = ("_plain", "id", "env", "__weakref__")

    def __init__(self, value: str | None, env: str, secret_id: str | None = None) -> None:
        self._plain = value
        self.env = env
        self.id = secret_id if secret_id is not None or not value else _secrets.register(self)

    @classmethod
    def restore(cls, secret_id: str | None, env: str) -> _Secret:
        """The key of an unpickled client: sent by its pool under ``secret_id``, else ``$env``."""
        found = _secrets.lookup(secret_id) if secret_id is not None else None
        return cls(found if found is not None else os.environ.get(env), env, secret_id)

    @property
    def value(self) -> str | None:
        """The key, or None (no key: requests go without Authorization)."""
        if self._plain is None and self.id is not None:
            # Its pool may have sent it after the client was unpickled.
            self._plain = _secrets.lookup(self.id) or os.environ.get(self.env)
        return self._plain

    @property
    def missing(self) -> bool:
        """Whoever pickled the client had a key, and it is known neither here nor in ``$env``."""
        return self.id is not None and self.value is None

    def __repr__(self) -> str:
        return "_Secret('***')" if self._plain else "_Secret(None)"

    def __reduce__(self) -> Any:
        raise TypeError("an API key is never pickled; a WorkerPool carries it to its workers in memory")

    def authorize(self, request: httpx.Request) -> None:
        """Put ``Authorization: Bearer <key>`` on the request (nothing without a key)."""
        if self.value:
            request.headers["Authorization"] = f"Bearer {self.value}"

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced by ``***``."""
        # A key of a few characters is no secret worth hiding and would mangle
        # ordinary words ("sim" in "sim-small"); real keys are long.
        if self.value and len(self.value) >= 8 and self.value in text:
            return text.replace(self.value, "***")
        return text


class _BearerAuth(httpx.Auth):
    """httpx's hook for the key: the header is set inside the request object, never in a caller's frame."""

    def __init__(self, secret: _Secret) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return f"_BearerAuth({self._secret!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._secret.authorize(request)
        yield request


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
        cache: CacheMode = False,
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
        self._api_key = _Secret(api_key if api_key is not None else os.environ.get(api_key_env), api_key_env)
        self._setup()

    def _setup(self) -> None:
        self._auth = _BearerAuth(self._api_key)
        self._http: httpx.Client | None = None
        self._http_pid = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle, pickling

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = {
            k: v for k, v in self.__dict__.items() if k not in ("_http", "_http_pid", "_lock", "_api_key", "_auth")
        }
        # Only the key's random id: a WorkerPool sends the key itself to its workers (issue 13 item 11).
        state["_api_key_id"] = self._api_key.id
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        secret_id = state.pop("_api_key_id", None)
        self.__dict__.update(state)
        self._api_key = _Secret.restore(secret_id, self.api_key_env)
        self._setup()

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None or self._http_pid != os.getpid():
                limits = httpx.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                )
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
        return self._api_key.scrub(text)

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
        """One call without the fallbacks: a cached answer, else a ChatCall (whose answer is cached)."""
        body = self._request_body(messages, max_tokens, temperature, params)
        if self._api_key.missing:
            # An unauthenticated request would be a 401 that says nothing of the cause.
            raise InvalidRequest(
                f"LLMClient({self.model!r}) has no API key in this process (pid {os.getpid()}): it had one "
                f"(api_key= or ${self.api_key_env}) where it was created, but it was unpickled outside a "
                f"WorkerPool that could bring the key, and ${self.api_key_env} is not set here. Pass the client "
                f"through a WorkerPool or optimize(workers=...), set ${self.api_key_env} in this process, or "
                "create the client here with api_key="
            )
        rec = current_recorder()
        key = _cache.cache_key(self.cache, self.model, body)
        if key is not None:
            hit = _cache.lookup(self._cache_storage, key)
            if hit is not None:
                if rec is not None:
                    rec.add("llm.cache_hits")
                return from_cache(hit)
        completion = ChatCall(self, body, rec).run()
        if key is not None:
            _cache.save(self._cache_storage, key, self.model, to_cache(completion))
        return completion

    def _request_body(
        self, messages: Messages, max_tokens: int | None, temperature: float | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The JSON body of the request (checked first)."""
        msgs = self._check_messages(messages)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequest(f"max_tokens={max_tokens!r} must be an int >= 1")
        body: dict[str, Any] = {"model": self.model, "messages": msgs, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return body

    def _post(self, body: dict[str, Any], timeout: float) -> tuple[httpx.Response, float]:
        """POST one attempt; the response and its round-trip time (httpx errors propagate)."""
        # The key goes in through the auth hook: no frame of this call holds it (issue 13 item 10).
        http = self._client()
        t0 = time.monotonic()
        resp = http.post(f"{self.base_url}/chat/completions", json=body, auth=self._auth, timeout=timeout)
        return resp, time.monotonic() - t0

    def _provider_message(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
            err = data.get("error", data) if isinstance(data, dict) else data
            msg = err.get("message") if isinstance(err, dict) else None
            text = str(msg if msg is not None else err)
        except ValueError:
            text = resp.text
        return self._scrub(" ".join(text.split())[:500]) or resp.reason_phrase


__all__ = ["LLMClient"]
