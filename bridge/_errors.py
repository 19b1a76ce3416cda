"""bridge's exceptions: what can go wrong across a process or network boundary.

Those of the pool, the LLM client, the rate limiter and fallbacks, all exported
by ``studyhall.bridge``. They load with ``studyhall.bridge`` itself (and in every
pool worker), so this module imports nothing but the root from ``storage``. The
whole tree, with every package's branch, is drawn in ``studyhall.storage._errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studyhall.storage import InvalidRequest, StudyhallError


class TaskTimeout(StudyhallError, TimeoutError):
    """A pool task ran past its timeout; its worker was killed and replaced."""


class WorkerCrashed(StudyhallError):
    """A worker process died while running a task (exit code, signal and pid attached)."""

    def __init__(
        self, message: str, *, exitcode: int | None = None, signal: int | None = None, pid: int | None = None
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = signal
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_crash, (str(self), self.exitcode, self.signal, self.pid))


def _rebuild_crash(message: str, exitcode: int | None, signal: int | None, pid: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, exitcode=exitcode, signal=signal, pid=pid)


class SerializationError(StudyhallError):
    """A task's call, result, exception or channel payload could not cross the process boundary."""


class ChannelError(StudyhallError):
    """A channel message could not be answered (no ``on_call``, or an error that could not be pickled)."""


class PoolClosed(StudyhallError, RuntimeError):
    """The pool is shut down (or gave up respawning) and takes no more work."""


class RestartStorm(PoolClosed):
    """Fresh workers kept dying at start-up (a broken import?); the pool stopped respawning."""


class RateLimitTimeout(StudyhallError, TimeoutError):
    """``acquire`` could not get capacity from every bucket before its timeout."""


class ProviderError(StudyhallError):
    """An LLM provider answered with an error (status and the provider's message attached)."""

    def __init__(self, message: str, *, status: int | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.model = model

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_provider_error, (type(self), str(self), self.status, self.model))


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, status: int | None, model: str | None
) -> ProviderError:
    return cls(message, status=status, model=model)


class RateLimited(ProviderError):
    """The provider kept answering 429 through every retry."""


class LLMTimeout(ProviderError, TimeoutError):
    """An LLM call (with its retries) ran out of time."""


class FallbackError(StudyhallError):
    """Every alternative failed; ``errors`` holds each cause in order (chained to the last)."""

    def __init__(self, message: str, errors: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.errors: list[BaseException] = list(errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FallbackError, (str(self), self.errors))


__all__ = [
    "ChannelError",
    "FallbackError",
    "InvalidRequest",
    "LLMTimeout",
    "PoolClosed",
    "ProviderError",
    "RateLimitTimeout",
    "RateLimited",
    "RestartStorm",
    "SerializationError",
    "StudyhallError",
    "TaskTimeout",
    "WorkerCrashed",
]
