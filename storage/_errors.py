"""The one tree of studyhall's exceptions, rooted at ``StudyhallError``.

Catching ``StudyhallError`` catches everything studyhall raises. Misuse (bad input,
unknown names) is on the ``InvalidRequest`` branch and nothing was written; the rest
are runtime failures of a database, a worker, a provider or a service. Each class is
defined beside the code that raises it and exported by that package (in brackets)::

    StudyhallError
    ├── InvalidRequest (ValueError)         [storage] a bad argument or unknown name; nothing written
    │   ├── StudyNotFound (KeyError)        [storage] no study of that name
    │   ├── TrialNotFound (KeyError)        [storage] no trial of that number in the study
    │   ├── DuplicateStudy                  [storage] the name is taken (load_if_exists=False)
    │   └── Conflict                        [optimizer] the trial's state forbids it (told twice, lease expired)
    ├── StorageError (RuntimeError)         [storage] the database failed and retrying did not fix it
    │   └── TransientStorageError           [storage] a lock, deadlock or dropped connection outlived its retries
    ├── TrialOwnershipLost                  [storage] this process stalled; its trial went to another process
    ├── TaskTimeout (TimeoutError)          [bridge] a pool task ran past its timeout; its worker was replaced
    ├── WorkerCrashed                       [bridge] a worker died under a task (exitcode, signal, pid)
    ├── SerializationError                  [bridge] a task, result or message could not be pickled
    ├── ChannelError                        [bridge] a worker's call to the parent could not be answered
    ├── PoolClosed (RuntimeError)           [bridge] the pool was shut down and takes no more work
    │   └── RestartStorm                    [bridge] fresh workers kept dying at start-up
    ├── RateLimitTimeout (TimeoutError)     [bridge] acquire() found no capacity before its timeout
    ├── ProviderError                       [bridge] an LLM provider answered with an error (status, model)
    │   ├── RateLimited                     [bridge] 429s outlasted the retries
    │   └── LLMTimeout (TimeoutError)       [bridge] the call and its retries ran out of time
    ├── FallbackError                       [bridge] every alternative failed (each cause in ``errors``)
    ├── WorkflowError (RuntimeError)        [optimizer] a workflow step failed (the trace so far attached)
    ├── TooManyErrors                       [optimizer] a MiproLoop minibatch had more failures than allowed
    └── ServiceError                        [optimizer] the HTTP service was unreachable or failed (5xx)

A trial that times out or crashes inside ``Study.optimize`` raises nothing: it is
told FAIL with the reason, and the run goes on (see ``OptimizeReport``).

``studyhall.optimizer`` also exports the [storage] classes, which its Orchestrator
and Study raise.
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


class TrialOwnershipLost(StudyhallError):
    """This process's trial was handed to another process while this one stalled; drop it.

    A RUNNING trial whose process stops heartbeating for the grace period (a SIGSTOP,
    a long pause, a cut network link) is failed or put back in the queue by another
    process, and may be running elsewhere under the same number. Every later write
    from the stalled process (``suggest_*``, ``report``, attributes, ``tell``) is
    refused with this error; nothing it sent was written.
    """
