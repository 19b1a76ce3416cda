"""studyhall's persistence: ``connect(url) -> Storage`` and studyhall's own tables.

A studyhall database IS an Optuna RDB storage (optuna-dashboard and the optuna CLI
read it as it is); studyhall adds ``studyhall_``-prefixed tables beside Optuna's.

Example:
    >>> from storage import connect
    >>> st = connect("sqlite:///studyhall.db")  # doctest: +SKIP
    >>> st.optuna.get_all_studies()  # doctest: +SKIP
"""

from storage import _schema as tables
from storage._errors import (
    DuplicateStudy,
    InvalidRequest,
    StorageError,
    StudyhallError,
    StudyNotFound,
    TransientStorageError,
    TrialNotFound,
)
from storage._storage import DEFAULT_URL, Storage, connect, is_transient, retrying

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
    "connect",
    "is_transient",
    "retrying",
    "tables",
]
