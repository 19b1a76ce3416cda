"""One ``LLMClient.chat()`` without its fallbacks: from the limiter to the Completion.

::

    ┌─> limiter.acquire(reserved tokens, timeout=time left)   (backpressure, FIFO)
    │   POST {base_url}/chat/completions  (httpx, pooled connections)
    │     200      -> Completion; limiter.adjust(actual - reserved); telemetry
    │     429      -> limiter.pause(Retry-After) so that every caller waits ─┐
    │     5xx, timeout, connection error ───────────────────────────────────┤
    └──── wait Retry-After, else exponential backoff with jitter (_retry.py) ┘
          other 4xx -> ProviderError at once; retries used up -> RateLimited /
          ProviderError; time up -> LLMTimeout
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

from studyhall.bridge._errors import LLMTimeout, ProviderError, RateLimited, RateLimitTimeout
from studyhall.bridge.llm._completion import Completion, parse_completion
from studyhall.bridge.llm._retry import MAX_HEADER_WAIT_S, RETRYABLE_STATUS, Retryable, Stop, retry_delay, retrying
from studyhall.bridge.llm._tokens import Reservation

if TYPE_CHECKING:
    from studyhall.bridge._telemetry import TaskRecorder
    from studyhall.bridge.llm._client import LLMClient


class ChatCall:
    """One call's way through its attempts: the deadline, the tokens reserved, the attempts made."""

    def __init__(self, client: LLMClient, body: dict[str, Any], recorder: TaskRecorder | None) -> None:
        self.client = client
        self.body = body
        self.rec = recorder
        self.reservation = Reservation.of(body["messages"], body.get("max_tokens"))
        self.start = time.monotonic()
        self.deadline = self.start + client.timeout
        self.attempts = 0

    def run(self) -> Completion:
        """Attempt until one answers; its Completion, accounted on the limiter and the recorder.

        Raises:
            ProviderError: a non-retryable answer, or the retries ran out (``RateLimited`` for 429s).
            LLMTimeout: the client's ``timeout`` ran out, waiting on the limiter included.
        """
        if self.rec is not None:
            self.rec.add("llm.calls")
        data, latency = self._retried()
        c = self.client
        completion = parse_completion(
            data,
            model=c.model,
            base_url=c.base_url,
            latency=latency,
            attempts=self.attempts,
            waited=time.monotonic() - self.start - latency,
        )
        self._reconcile(completion)
        self._record(completion)
        return completion

    def _retried(self) -> tuple[dict[str, Any], float]:
        """The answer's JSON and latency, after as many attempts as it took; failures translated."""
        c = self.client
        try:
            for tried in retrying(
                model=c.model,
                max_attempts=c.max_retries + 1,
                deadline=self.deadline,
                backoff=c.backoff,
                paused_limiter=c.limiter is not None,
            ):
                with tried:
                    data, latency = self._attempt()
        except Stop as stop:
            self._count_failure()
            raise stop.error from stop.__cause__
        except Retryable as exc:
            self._count_failure()
            raise self._exhausted(exc) from (exc.__cause__ or exc)
        return data, latency

    def _attempt(self) -> tuple[dict[str, Any], float]:
        """One HTTP attempt after the limiter's go-ahead; raises Retryable or Stop unless it got a 200."""
        self.attempts += 1
        left = self._acquire()
        per_try = min(left, self.client.attempt_timeout or left)
        try:
            resp, latency = self.client._post(self.body, per_try)
        except httpx.TimeoutException as exc:
            raise Retryable(f"no answer within {per_try:.1f}s ({type(exc).__name__})", None, None) from exc
        except httpx.TransportError as exc:
            reason = self.client._scrub(str(exc))[:200]
            raise Retryable(f"connection failed ({type(exc).__name__}: {reason})", None, None) from exc
        if resp.status_code != 200:
            raise self._refusal(resp)
        try:
            return resp.json(), latency
        except ValueError as exc:
            raise Retryable("the provider answered 200 with a body that is not JSON", 200, None) from exc

    def _acquire(self) -> float:
        """Wait for the limiter to grant the reservation within the time left; the seconds left then."""
        left = self.deadline - time.monotonic()
        limiter = self.client.limiter
        if left > 0 and limiter is not None:
            r = self.reservation
            try:
                limiter.acquire(tokens=r.tokens, input_tokens=r.prompt, output_tokens=r.output, timeout=left)
            except RateLimitTimeout as exc:
                raise Stop(self._timeout_error(self.attempts - 1, exc)) from exc
            left = self.deadline - time.monotonic()
        if left <= 0:
            raise Stop(self._timeout_error(self.attempts - 1, None))
        return left

    def _refusal(self, resp: httpx.Response) -> Retryable | Stop:
        """What a non-200 answer means: an attempt to retry, or an error to raise at once."""
        c = self.client
        status = resp.status_code
        message = c._provider_message(resp)
        should_retry = resp.headers.get("x-should-retry", "").lower() != "false"
        if status == 429:
            if self.rec is not None:
                self.rec.add("llm.rate_limited")
            delay = retry_delay(resp.headers)
            if not should_retry:
                return Stop(
                    RateLimited(f"{c.model} at {c.base_url} answered 429: {message}", status=429, model=c.model)
                )
            if c.limiter is not None:  # everyone sharing the limiter waits, not only this call
                c.limiter.pause(min(delay if delay is not None else 1.0, MAX_HEADER_WAIT_S))
            return Retryable(message, 429, delay)
        if should_retry and (status in RETRYABLE_STATUS or status >= 500):
            return Retryable(message, status, retry_delay(resp.headers, resets=False))
        return Stop(
            ProviderError(
                f"{c.model} at {c.base_url} answered {status}: {message}; "
                "this is not retried (check the request, the model name and the API key)",
                status=status,
                model=c.model,
            )
        )

    def _reconcile(self, completion: Completion) -> None:
        """Give the limiter back what the reservation overestimated (or take what it missed)."""
        limiter = self.client.limiter
        if limiter is None:
            return
        deltas = self.reservation.corrections(completion.prompt_tokens, completion.completion_tokens)
        if any(deltas.values()):
            limiter.adjust(**deltas)

    def _record(self, completion: Completion) -> None:
        rec = self.rec
        if rec is None:
            return
        rec.llm_call(
            completion.model,
            completion.latency_s,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.attempts,
            completion.finish_reason,
        )

    def _count_failure(self) -> None:
        if self.rec is not None:
            self.rec.add("llm.errors")
            self.rec.add("llm.retries", max(0, self.attempts - 1))

    def _timeout_error(self, attempts: int, cause: Exception | None) -> LLMTimeout:
        c = self.client
        if isinstance(cause, RateLimitTimeout):
            why = " waiting for the rate limiter"
        elif cause is not None:
            why = f" (last attempt: {cause})"
        else:
            why = ""
        return LLMTimeout(
            f"{c.model} at {c.base_url}: no answer within timeout={c.timeout:g}s{why} "
            f"after {attempts} attempt(s); raise timeout= or lower the load",
            model=c.model,
        )

    def _exhausted(self, exc: Retryable) -> ProviderError:
        """The error for an attempt that failed and could not be retried again."""
        c = self.client
        if self.attempts <= c.max_retries or time.monotonic() >= self.deadline:
            # Stopped before the retries ran out: the next wait would have passed the deadline.
            return self._timeout_error(self.attempts, exc)
        what = f"{c.model} at {c.base_url}"
        if exc.status == 429:
            return RateLimited(
                f"{what} kept answering 429 through {self.attempts} attempts ({exc}); lower the "
                "limiter's rpm/tpm to the provider's limits or raise max_retries",
                status=429,
                model=c.model,
            )
        status = f"HTTP {exc.status}" if exc.status else "no answer"
        return ProviderError(
            f"{what} failed {self.attempts} attempts ({status}: {exc}); the provider may be down, retry later",
            status=exc.status,
            model=c.model,
        )
