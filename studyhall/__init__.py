"""studyhall: Optuna studies in SQL, a self-healing worker pool, rate-limited LLM trials.

The front door: every public name of ``studyhall.optimizer``, ``studyhall.bridge``
and ``studyhall.storage``, loaded on first use (so ``import studyhall`` costs nothing
until a name is touched, and a pool worker that needs only ``studyhall.bridge`` never
imports Optuna).

Example:
    >>> from studyhall import Orchestrator, Float, Categorical
    >>> study = Orchestrator().create_study("qa", direction="maximize")  # doctest: +SKIP
    >>> t = study.ask({"temperature": Float(0, 1), "instruction": Categorical(range(8))})  # doctest: +SKIP
    >>> study.tell(t, scores=[1, 0, 1, 1])  # doctest: +SKIP

The exceptions form one tree rooted at ``StudyhallError``; it is drawn in
``studyhall.storage._errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the sub-package that exports it.
_HOME = {
    # studyhall.storage
    "DEFAULT_URL": "storage",
    "DuplicateStudy": "storage",
    "InvalidRequest": "storage",
    "Storage": "storage",
    "StorageError": "storage",
    "StudyNotFound": "storage",
    "StudyhallError": "storage",
    "TransientStorageError": "storage",
    "TrialNotFound": "storage",
    "TrialOwnershipLost": "storage",
    "connect": "storage",
    "is_transient": "storage",
    "retrying": "storage",
    "tables": "storage",
    # studyhall.bridge
    "ChannelError": "bridge",
    "Completion": "bridge",
    "Decision": "bridge",
    "FakeProvider": "bridge",
    "FallbackError": "bridge",
    "LLMClient": "bridge",
    "LLMTimeout": "bridge",
    "Limit": "bridge",
    "PoolClosed": "bridge",
    "PoolTimeouts": "bridge",
    "ProviderError": "bridge",
    "RateLimitTimeout": "bridge",
    "RateLimited": "bridge",
    "RateLimiter": "bridge",
    "RestartStorm": "bridge",
    "SerializationError": "bridge",
    "TaskRecorder": "bridge",
    "TaskTimeout": "bridge",
    "WorkerCrashed": "bridge",
    "WorkerPool": "bridge",
    "current_recorder": "bridge",
    "recording": "bridge",
    "with_fallbacks": "bridge",
    "worker_channel": "bridge",
    # studyhall.optimizer
    "Categorical": "optimizer",
    "Client": "optimizer",
    "Conflict": "optimizer",
    "Evaluation": "optimizer",
    "Float": "optimizer",
    "Int": "optimizer",
    "FullEval": "optimizer",
    "MiproEvent": "optimizer",
    "MiproLoop": "optimizer",
    "MiproResult": "optimizer",
    "StudyhallMIPRO": "optimizer",
    "bootstrap_demos": "optimizer",
    "dspy_lm": "optimizer",
    "optimize_dspy": "optimizer",
    "propose_instructions": "optimizer",
    "OptimizeReport": "optimizer",
    "Orchestrator": "optimizer",
    "RemoteStudy": "optimizer",
    "ServiceError": "optimizer",
    "Study": "optimizer",
    "StudyInfo": "optimizer",
    "Summary": "optimizer",
    "TooManyErrors": "optimizer",
    "TrialHandle": "optimizer",
    "Workflow": "optimizer",
    "WorkflowError": "optimizer",
    "WorkflowResult": "optimizer",
    "arith_task": "optimizer",
    "create_app": "optimizer",
    "events": "optimizer",
    "make_sampler": "optimizer",
    "summarize": "optimizer",
    "telemetry": "optimizer",
    "trace": "optimizer",
}

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge import (
        ChannelError,
        Completion,
        Decision,
        FakeProvider,
        FallbackError,
        Limit,
        LLMClient,
        LLMTimeout,
        PoolClosed,
        PoolTimeouts,
        ProviderError,
        RateLimited,
        RateLimiter,
        RateLimitTimeout,
        RestartStorm,
        SerializationError,
        TaskRecorder,
        TaskTimeout,
        WorkerCrashed,
        WorkerPool,
        current_recorder,
        recording,
        with_fallbacks,
        worker_channel,
    )
    from studyhall.optimizer import (
        Categorical,
        Client,
        Conflict,
        Evaluation,
        Float,
        FullEval,
        Int,
        MiproEvent,
        MiproLoop,
        MiproResult,
        OptimizeReport,
        Orchestrator,
        RemoteStudy,
        ServiceError,
        Study,
        StudyhallMIPRO,
        StudyInfo,
        Summary,
        TooManyErrors,
        TrialHandle,
        Workflow,
        WorkflowError,
        WorkflowResult,
        arith_task,
        bootstrap_demos,
        create_app,
        dspy_lm,
        events,
        make_sampler,
        optimize_dspy,
        propose_instructions,
        summarize,
        telemetry,
        trace,
    )
    from studyhall.storage import (
        DEFAULT_URL,
        DuplicateStudy,
        InvalidRequest,
        Storage,
        StorageError,
        StudyhallError,
        StudyNotFound,
        TransientStorageError,
        TrialNotFound,
        TrialOwnershipLost,
        connect,
        is_transient,
        retrying,
        tables,
    )


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _HOME:
        value = getattr(importlib.import_module(f"studyhall.{_HOME[name]}"), name)
    else:
        raise AttributeError(f"module 'studyhall' has no attribute {name!r}")
    globals()[name] = value
    return value


def _version() -> str:
    # On first access only: importlib.metadata costs a pool worker, which imports
    # studyhall on every start, some 25 ms.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("studyhall")
    except PackageNotFoundError:  # pragma: no cover - a checkout on sys.path without an install
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted([*__all__, "bridge", "optimizer", "storage"])


__all__ = [
    "Categorical",
    "ChannelError",
    "Client",
    "Completion",
    "Conflict",
    "DEFAULT_URL",
    "Decision",
    "DuplicateStudy",
    "Evaluation",
    "FakeProvider",
    "FallbackError",
    "Float",
    "FullEval",
    "Int",
    "InvalidRequest",
    "LLMClient",
    "LLMTimeout",
    "Limit",
    "MiproEvent",
    "MiproLoop",
    "MiproResult",
    "OptimizeReport",
    "Orchestrator",
    "PoolClosed",
    "PoolTimeouts",
    "ProviderError",
    "RateLimitTimeout",
    "RateLimited",
    "RateLimiter",
    "RemoteStudy",
    "RestartStorm",
    "SerializationError",
    "ServiceError",
    "Storage",
    "StorageError",
    "Study",
    "StudyInfo",
    "StudyNotFound",
    "StudyhallError",
    "StudyhallMIPRO",
    "Summary",
    "TaskRecorder",
    "TaskTimeout",
    "TooManyErrors",
    "TransientStorageError",
    "TrialHandle",
    "TrialNotFound",
    "TrialOwnershipLost",
    "WorkerCrashed",
    "WorkerPool",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "arith_task",
    "bootstrap_demos",
    "connect",
    "create_app",
    "current_recorder",
    "dspy_lm",
    "events",
    "is_transient",
    "make_sampler",
    "optimize_dspy",
    "propose_instructions",
    "recording",
    "retrying",
    "summarize",
    "tables",
    "telemetry",
    "trace",
    "with_fallbacks",
    "worker_channel",
]
