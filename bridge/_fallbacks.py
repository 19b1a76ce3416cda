"""with_fallbacks: try alternatives in order and keep every cause when all of them fail.

::

    chain = with_fallbacks(primary.chat, backup.chat, on=(ProviderError,))
    c = chain(messages)            # the first success
    chain.served_by                # 1: backup answered (the last call in this thread)
    r = chain.call(messages)       # Served(value, index, name, errors): race-free
    # all failed: FallbackError(.errors = [every cause]) raised from the last one

An error outside ``on`` (a bug, a bad argument) is not a reason to try the next
alternative: it propagates at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from studyhall.bridge._errors import FallbackError, InvalidRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Served(Generic[T]):
    """The outcome of one fallback call: the value, who served it and what failed before."""

    value: T
    index: int
    name: str
    errors: list[BaseException] = field(default_factory=list)


def _name_of(fn: Callable[..., Any]) -> str:
    owner = getattr(fn, "__self__", None)
    model = getattr(owner, "model", None)
    if isinstance(model, str):
        return model
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


class Fallbacks(Generic[T]):
    """A callable that tries each function in turn; made by :func:`with_fallbacks`."""

    def __init__(
        self,
        fns: Sequence[Callable[..., T]],
        on: type[BaseException] | tuple[type[BaseException], ...],
        names: Sequence[str] | None,
    ) -> None:
        self.fns = list(fns)
        self.on = on
        self.names = list(names) if names is not None else [_name_of(f) for f in self.fns]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"with_fallbacks({', '.join(self.names)})"

    def call(self, *args: Any, **kwargs: Any) -> Served[T]:
        """Try each function with these arguments; the first success and who served it.

        Raises:
            FallbackError: every function failed with an exception in ``on``.
        """
        errors: list[BaseException] = []
        for i, fn in enumerate(self.fns):
            try:
                value = fn(*args, **kwargs)
            except self.on as exc:
                errors.append(exc)
                continue
            self._local.served = (i, self.names[i])
            return Served(value, i, self.names[i], errors)
        self._local.served = (None, None)
        causes = "; ".join(
            f"[{i}] {self.names[i]}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            for i, e in enumerate(errors)
        )
        raise FallbackError(
            f"all {len(self.fns)} alternatives failed ({causes}); see .errors for each cause",
            errors,
        ) from errors[-1]

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.call(*args, **kwargs).value

    @property
    def served_by(self) -> int | None:
        """Index of the function that served this thread's last call (None if all failed)."""
        return getattr(self._local, "served", (None, None))[0]

    @property
    def served_by_name(self) -> str | None:
        """Name of the function that served this thread's last call."""
        return getattr(self._local, "served", (None, None))[1]


def with_fallbacks(
    *fns: Callable[..., T],
    on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    names: Sequence[str] | None = None,
) -> Fallbacks[T]:
    """Combine ``fns`` into one callable that returns the first success, in order.

    Args:
        fns: the alternatives, called with the same arguments.
        on: the exceptions that move on to the next alternative; others propagate.
        names: how to call each alternative in errors and ``served_by_name``
            (default: the bound client's model, else the function's name).

    Raises:
        InvalidRequest: no function given, a non-callable, or names of the wrong length.

    Example:
        >>> chain = with_fallbacks(lambda: 1 / 0, lambda: "ok", on=(ZeroDivisionError,))
        >>> chain(), chain.served_by
        ('ok', 1)
    """
    if not fns:
        raise InvalidRequest("with_fallbacks() needs at least one function to call")
    bad = [f for f in fns if not callable(f)]
    if bad:
        raise InvalidRequest(f"with_fallbacks() takes callables; got {bad[0]!r}")
    classes = on if isinstance(on, tuple) else (on,)
    if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise InvalidRequest(f"on= must be an exception class or a tuple of them; got {on!r}")
    if names is not None and len(names) != len(fns):
        raise InvalidRequest(f"names= has {len(names)} entries for {len(fns)} functions")
    return Fallbacks(fns, classes, names)


__all__ = ["Fallbacks", "Served", "with_fallbacks"]
