"""The root of studyhall's exceptions.

Every package adds its own branch; catching ``StudyhallError`` catches them all::

    StudyhallError
    ├── InvalidRequest (ValueError)        the caller asked for something wrong
    │   ├── StudyNotFound (KeyError)       bridge and optimizer add their own
    │   ├── TrialNotFound (KeyError)
    │   └── DuplicateStudy
    └── StorageError (RuntimeError)        the database failed us
        └── TransientStorageError          a lock, deadlock or dropped connection
                                           that outlived its retries

``bridge`` adds TaskTimeout, WorkerCrashed, PoolClosed, RateLimitTimeout,
ProviderError and its subclasses; ``optimizer`` adds TrialTimeout and WorkflowError.
"""

from __future__ import annotations


class StudyhallError(Exception):
    """Base class of every error studyhall raises."""


class InvalidRequest(StudyhallError, ValueError):
    """The request was wrong (bad argument, unknown name); nothing was written."""


class StudyNotFound(InvalidRequest, KeyError):
    """No study of that name exists in the storage."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TrialNotFound(InvalidRequest, KeyError):
    """No trial of that number exists in the study."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateStudy(InvalidRequest):
    """A study of that name already exists and ``load_if_exists`` was not set."""


class StorageError(StudyhallError, RuntimeError):
    """The database failed in a way that retrying did not fix."""


class TransientStorageError(StorageError):
    """A lock, deadlock, serialization failure or dropped connection outlived its retries."""
