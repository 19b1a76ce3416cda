"""When an LLM call is retried and how long it waits: Retry-After headers, backoff, the stop rule.

::

    an attempt fails ─► Retryable(status, delay)   429, 408/409/425, 5xx, timeout, connection error
                     └► Stop(error)                anything else: raised at once, never retried
    wait   the delay the provider asked for (Retry-After, rate-limit resets), at most
           120 s, plus up to 10% jitter; after a 429 nothing when a limiter was paused
           for it (its next acquire() waits); without a delay, exponential backoff with
           full jitter: up to backoff, 2*backoff, ... capped at 30 s
    stop   the retries are used up, or the next wait would pass the call's deadline
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Mapping

import tenacity

_log = logging.getLogger("studyhall.bridge.llm")

MAX_HEADER_WAIT_S = 120.0  # a Retry-After beyond this is treated as this
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

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
    asked = _retry_after(h, now)
    if asked is not None or not resets:
        return asked
    return _reset_delay(h, now)


def _retry_after(h: dict[str, str], now: float) -> float | None:
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
    return None


def _reset_delay(h: dict[str, str], now: float) -> float | None:
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


class Retryable(Exception):
    """One failed attempt worth retrying (internal; translated before it leaves ``chat()``)."""

    def __init__(self, message: str, status: int | None, delay: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.delay = delay


class Stop(Exception):
    """An attempt that must not be retried, carrying the error to raise."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def retrying(
    *, model: str, max_attempts: int, deadline: float, backoff: float, paused_limiter: bool
) -> tenacity.Retrying:
    """The retry loop of one call to ``model``: retries ``Retryable`` only, waits and stops as drawn above.

    ``paused_limiter``: each 429 paused a limiter that the next attempt waits on.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Retryable),
        wait=_wait(backoff, paused_limiter),
        stop=_stop(max_attempts, deadline),
        reraise=True,
        before_sleep=_log_retry(model),
    )


def _wait(backoff: float, paused_limiter: bool) -> Callable[[tenacity.RetryCallState], float]:
    def wait(retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay: float | None = getattr(exc, "delay", None)
        if delay is not None:
            delay = min(delay, MAX_HEADER_WAIT_S)
            if getattr(exc, "status", None) == 429 and paused_limiter:
                return 0.0  # the limiter was paused for it: the next acquire() waits
            return delay * (1.0 + 0.1 * random.random())
        return random.uniform(0.0, min(30.0, backoff * 2 ** (retry_state.attempt_number - 1)))

    return wait


def _stop(max_attempts: int, deadline: float) -> Callable[[tenacity.RetryCallState], bool]:
    def stop(retry_state: tenacity.RetryCallState) -> bool:
        if retry_state.attempt_number >= max_attempts:
            return True
        return time.monotonic() + retry_state.upcoming_sleep >= deadline

    return stop


def _log_retry(model: str) -> Callable[[tenacity.RetryCallState], None]:
    def log(retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        status = getattr(exc, "status", None)
        # A 429 is expected backpressure (the limiter pauses everyone); only other
        # failures deserve a warning on the user's terminal.
        _log.log(
            logging.INFO if status == 429 else logging.WARNING,
            "%s: attempt %d failed (%s%s); retrying in %.2fs",
            model,
            retry_state.attempt_number,
            f"HTTP {status}: " if status else "",
            str(exc)[:200],
            retry_state.upcoming_sleep,
        )

    return log
