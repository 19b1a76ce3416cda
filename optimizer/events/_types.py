"""Registered event types: a dataclass declares an event's fields, and records are checked against it.

Unregistered types take any JSON-serialisable dict. :func:`validate` turns what
``record`` was given (a dict or a dataclass instance) into the JSON-ready dict
to store, or says in an InvalidRequest what does not fit.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from studyhall.storage import InvalidRequest

_types: dict[str, type] = {}
_types_lock = threading.Lock()


def register(event_type: str, cls: type) -> None:
    """Declare the fields of ``event_type`` with a dataclass; later records are checked against it.

    Example:
        >>> @dataclasses.dataclass
        ... class Retrieved:
        ...     query: str
        ...     k: int
        >>> events.register("retrieved", Retrieved)  # doctest: +SKIP
    """
    check_type_name(event_type)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise InvalidRequest(f"register({event_type!r}, ...) takes a dataclass type; got {cls!r:.80}")
    typing.get_type_hints(cls)  # fail now, not at the first record, on an unresolvable annotation
    with _types_lock:
        _types[event_type] = cls


def unregister(event_type: str) -> None:
    """Forget the declared fields of ``event_type`` (any JSON dict is accepted again)."""
    with _types_lock:
        _types.pop(event_type, None)


def registered() -> dict[str, type]:
    """The declared event types and their dataclasses."""
    with _types_lock:
        return dict(_types)


def check_type_name(event_type: Any) -> str:
    """``event_type`` if it is a name of 1-128 characters, else InvalidRequest."""
    if not isinstance(event_type, str) or not event_type or len(event_type) > 128:
        raise InvalidRequest(f"an event type is a string of 1-128 characters; got {event_type!r:.60}")
    return event_type


def validate(event_type: str, data: Any) -> dict[str, Any]:
    """``data`` as the JSON-ready dict to store, or InvalidRequest saying what does not fit."""
    check_type_name(event_type)
    cls = _types.get(event_type)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        if cls is not None and not isinstance(data, cls):
            raise InvalidRequest(
                f"event type {event_type!r} is registered with {cls.__name__}; got a {type(data).__name__}"
            )
        out = dataclasses.asdict(data)
    elif isinstance(data, Mapping):
        out = dict(data)
    elif data is None and cls is None:
        out = {}
    else:
        raise InvalidRequest(f"event data must be a dict or a dataclass instance; got {type(data).__name__}")
    if cls is not None:
        out = _check_fields(event_type, cls, out)
    return json_ready(f"the data of event {event_type!r}", out)


def json_ready(what: str, out: dict[str, Any]) -> dict[str, Any]:
    """``out`` if it has string keys and serialises to JSON (no NaN), else InvalidRequest naming ``what``."""
    for key in out:
        if not isinstance(key, str):
            raise InvalidRequest(f"{what} has a key that is not a string: {key!r:.60}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"{what} is not JSON-serialisable ({exc}); pass plain dicts, lists, strings, "
            "finite numbers, booleans and None"
        ) from exc
    return out


def _check_fields(event_type: str, cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - set(fields), key=str)
    if extra:
        raise InvalidRequest(f"event {event_type!r} ({cls.__name__}) has no field(s) {', '.join(map(str, extra))}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise InvalidRequest(f"event {event_type!r} ({cls.__name__}) is missing field {name!r}")
        problem = _type_problem(value, hints.get(name, Any))
        if problem:
            raise InvalidRequest(f"event {event_type!r} field {name!r}: {problem}")
        out[name] = (
            dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
        )
    return out


def _type_problem(value: Any, tp: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``tp`` (None when it does or cannot be told)."""
    if tp is Any or tp is object:
        return None
    if tp is None or tp is type(None):
        return None if value is None else f"expected None, got {type(value).__name__}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else f"expected {_name(tp)}, got {type(value).__name__}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {list(args)!r}, got {value!r:.40}"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected float, got {type(value).__name__}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected int, got {type(value).__name__}"
    if tp in (bool, str):
        return None if isinstance(value, tp) else f"expected {tp.__name__}, got {type(value).__name__}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return None
        if isinstance(value, Mapping):
            try:
                _check_fields(tp.__name__, tp, dict(value))
            except InvalidRequest as exc:
                return str(exc)
            return None
        return f"expected {tp.__name__}, got {type(value).__name__}"
    container = origin or tp
    if container in (list, tuple, Sequence, typing.Sequence, set, frozenset):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return f"expected a list, got {type(value).__name__}"
        item = args[0] if args and not (container is tuple and len(args) != 2) else Any
        if container is tuple and len(args) == 2 and args[1] is not Ellipsis:
            item = Any
        for i, v in enumerate(value):
            problem = _type_problem(v, item)
            if problem:
                return f"item {i}: {problem}"
        return None
    if container in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            return f"expected a dict, got {type(value).__name__}"
        vt = args[1] if len(args) == 2 else Any
        for k, v in value.items():
            if not isinstance(k, str):
                return f"keys must be strings, got {k!r:.40}"
            problem = _type_problem(v, vt)
            if problem:
                return f"key {k!r}: {problem}"
        return None
    if isinstance(tp, type):
        return None if isinstance(value, tp) else f"expected {tp.__name__}, got {type(value).__name__}"
    return None  # an annotation this checker does not understand: let JSON decide


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
