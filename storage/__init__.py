"""studyhall's persistence: ``connect(url) -> Storage`` and studyhall's own tables.

A studyhall database IS an Optuna RDB storage (optuna-dashboard and the optuna CLI
read it as it is); studyhall adds ``studyhall_``-prefixed tables beside Optuna's.
The exceptions load at once; everything that needs SQLAlchemy loads on first use,
so ``import studyhall.bridge`` (which re-exports the exceptions) stays light.

Example:
    >>> from studyhall.storage import connect
    >>> st = connect("sqlite:///studyhall.db")  # doctest: +SKIP
    >>> st.optuna.get_all_studies()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studyhall.storage._errors import (
    DuplicateStudy,
    InvalidRequest,
    StorageError,
    StudyhallError,
    StudyNotFound,
    TransientStorageError,
    TrialNotFound,
    TrialOwnershipLost,
)

# Public name -> the private module that defines it (imported on first access).
_LAZY = {
    "DEFAULT_URL": "studyhall.storage._storage",
    "Storage": "studyhall.storage._storage",
    "connect": "studyhall.storage._storage",
    "is_transient": "studyhall.storage._retry",
    "retrying": "studyhall.storage._retry",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.storage import _schema as tables
    from studyhall.storage._retry import is_transient, retrying
    from studyhall.storage._storage import DEFAULT_URL, Storage, connect


def __getattr__(name: str) -> Any:
    if name == "tables":
        value: Any = importlib.import_module("studyhall.storage._schema")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'studyhall.storage' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_URL",
    "DuplicateStudy",
    "InvalidRequest",
    "Storage",
    "StorageError",
    "StudyNotFound",
    "StudyhallError",
    "TransientStorageError",
    "TrialNotFound",
    "TrialOwnershipLost",
    "connect",
    "is_transient",
    "retrying",
    "tables",
]
