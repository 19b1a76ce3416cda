"""Named services for objectives (``get("lm")``), with test overrides scoped by context.

::

    services.register("lm", LLMClient(...))        # process-wide
    with services.override("lm", fake_client):     # this context only (contextvars)
        study.optimize(objective, workers=2)       # ...and the pool workers it starts
    # inside the objective:
    lm = services.get("lm")

``optimize`` ships :func:`snapshot` with every task and the worker runs the task
inside :func:`restore`, so an override reaches trials in other processes too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from studyhall.storage import InvalidRequest

_registry: dict[str, Any] = {}
_lock = threading.Lock()
# Read-only default: set() always installs a new mapping, nothing may change this one.
_overrides: ContextVar[Mapping[str, Any]] = ContextVar("studyhall_service_overrides", default=MappingProxyType({}))


def register(name: str, service: Any) -> None:
    """Make ``service`` available as ``get(name)`` everywhere in this process."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"a service name must be a non-empty string; got {name!r}")
    with _lock:
        _registry[name] = service


def unregister(name: str) -> None:
    """Forget the process-wide service ``name`` (overrides are unaffected)."""
    with _lock:
        _registry.pop(name, None)


def get(name: str) -> Any:
    """The service registered (or overridden in this context) under ``name``."""
    overrides = _overrides.get()
    if name in overrides:
        return overrides[name]
    with _lock:
        if name in _registry:
            return _registry[name]
        known = sorted({*_registry, *overrides})
    raise InvalidRequest(
        f"no service named {name!r}; register it with services.register({name!r}, obj)"
        + (f" (registered: {', '.join(known)})" if known else "")
    )


@contextlib.contextmanager
def override(name: str, service: Any) -> Iterator[Any]:
    """Within the block (this context only), ``get(name)`` returns ``service``."""
    token = _overrides.set({**_overrides.get(), name: service})
    try:
        yield service
    finally:
        _overrides.reset(token)


def snapshot() -> dict[str, Any]:
    """Every service visible here (registrations, then this context's overrides)."""
    with _lock:
        merged = dict(_registry)
    merged.update(_overrides.get())
    return merged


@contextlib.contextmanager
def restore(services: Mapping[str, Any]) -> Iterator[None]:
    """Run a block (in a worker) with ``services`` as this context's overrides."""
    token = _overrides.set({**_overrides.get(), **services})
    try:
        yield
    finally:
        _overrides.reset(token)
