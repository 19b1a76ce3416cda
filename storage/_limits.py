"""What every backend can store, checked once, the same everywhere.

SQLite takes almost anything; PostgreSQL refuses a NUL character in text, MariaDB
truncates or refuses a value longer than its column, and UTF-8 has no lone
surrogates. Checking before writing makes every backend accept and refuse the same
input, with one message, and leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from studyhall.storage._errors import InvalidRequest

MAX_NAME = 512  # Optuna's indexed name columns: study_name, param_name, attribute keys
MAX_JSON = 65_535  # Optuna's value_json columns are TEXT: 64 KiB on MySQL/MariaDB


def check_name(kind: str, name: Any, *, empty: bool = False) -> str:
    """``name`` if every backend can store it as a ``kind`` (study name, parameter name, ...)."""
    if not isinstance(name, str):
        raise InvalidRequest(f"a {kind} must be a string; got {type(name).__name__} {name!r:.60}")
    if not name and not empty:
        raise InvalidRequest(f"a {kind} must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"a {kind} is at most {MAX_NAME} characters; got {len(name)} ({name[:40]!r}...)")
    if "\x00" in name:
        raise InvalidRequest(f"a {kind} must not contain a NUL character; got {name!r:.80}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"a {kind} must be valid UTF-8 (it has a lone surrogate at {exc.start}); got {name!r:.80}"
        ) from exc
    return name


def check_json(kind: str, text: str) -> str:
    """``text`` (a value's JSON) if it fits Optuna's TEXT column on every backend."""
    if len(text) <= MAX_JSON // 4:  # at most 4 UTF-8 bytes a character: fits without counting
        return text
    size = len(text.encode("utf-8"))
    if size > MAX_JSON:
        raise InvalidRequest(
            f"{kind} is {size:,} bytes as JSON; at most {MAX_JSON:,} fit (Optuna's TEXT column on "
            "MySQL/MariaDB): store a summary or a reference to the data instead"
        )
    return text


_GOOD_KEYS: set[str] = set()  # attribute keys already checked (a tell writes the same dozen each time)
_MAX_GOOD_KEYS = 10_000


def attr_json(kind: str, key: Any, value: Any) -> str:
    """The JSON of attribute ``key`` = ``value`` (of a trial or study), if every backend can store it."""
    if key.__class__ is not str or key not in _GOOD_KEYS:
        check_name(f"{kind} key", key)
        if len(_GOOD_KEYS) < _MAX_GOOD_KEYS:
            _GOOD_KEYS.add(key)
    cls = value.__class__
    if cls is float and math.isfinite(value):  # what json.dumps writes for a finite float or an int
        return float.__repr__(value)
    if cls is int:
        return int.__repr__(value)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"{kind} {key!r} must be JSON-serializable (numbers, strings, lists, dicts, None); "
            f"got {type(value).__name__}: {exc}"
        ) from exc
    return check_json(f"{kind} {key!r}", text)
