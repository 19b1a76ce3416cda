"""studyhall's front door: studies, ask/tell, search spaces and score distributions.

Every name loads on first use (PEP 562), so that a pool worker importing one leaf
module (the trial runner, ``services``) does not pay for Optuna, SQLAlchemy,
fastapi or httpx. The sub-packages, one per idea::

    study/      Orchestrator, Study (ask/tell), search spaces, Summary
    optimize/   Study.optimize: the parent loop, where trials run, the remote trial
    mipro/      MiproLoop: candidates, minibatch evaluation, proposals, bootstrapping, the simulated task
    dspy/       the DSPy bridge: dspy_lm, optimize_dspy (DSPy loaded only when used)
    service/    the HTTP service (create_app) and its Client
    events/     events.record, query, trace_tree   (a public module)
    telemetry/  Prometheus registry, study distributions, the study report (a public module)
    cli/        the ``studyhall`` command, one module per command

Example:
    >>> from studyhall.optimizer import Orchestrator, Float, Categorical
    >>> study = Orchestrator().create_study("qa", direction="maximize")  # doctest: +SKIP
    >>> t = study.ask({"temperature": Float(0, 1), "instruction": Categorical(range(8))})  # doctest: +SKIP
    >>> study.tell(t, scores=[1, 0, 1, 1])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The storage's errors, which Orchestrator and Study raise: importable from here too.
from studyhall.storage import (
    DuplicateStudy,
    InvalidRequest,
    StorageError,
    StudyhallError,
    StudyNotFound,
    TransientStorageError,
    TrialNotFound,
    TrialOwnershipLost,
)

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    "Categorical": "studyhall.optimizer.study._space",
    "Float": "studyhall.optimizer.study._space",
    "Int": "studyhall.optimizer.study._space",
    "Orchestrator": "studyhall.optimizer.study._orchestrator",
    "StudyInfo": "studyhall.optimizer.study._orchestrator",
    "make_sampler": "studyhall.optimizer.study._orchestrator",
    "Study": "studyhall.optimizer.study._study",
    "TrialHandle": "studyhall.optimizer.study._study",
    "Summary": "studyhall.optimizer.study._summary",
    "summarize": "studyhall.optimizer.study._summary",
    "Evaluation": "studyhall.optimizer.optimize._evaluation",
    "OptimizeReport": "studyhall.optimizer.optimize._report",
    "MiproLoop": "studyhall.optimizer.mipro._loop",
    "MiproEvent": "studyhall.optimizer.mipro._loop",
    "MiproResult": "studyhall.optimizer.mipro._results",
    "FullEval": "studyhall.optimizer.mipro._results",
    "propose_instructions": "studyhall.optimizer.mipro._propose",
    "bootstrap_demos": "studyhall.optimizer.mipro._bootstrap",
    "optimize_dspy": "studyhall.optimizer.dspy._optimize",
    "dspy_lm": "studyhall.optimizer.dspy._lm",
    "StudyhallMIPRO": "studyhall.optimizer.dspy._optimize",
    "TooManyErrors": "studyhall.optimizer.mipro._evaluate",
    "arith_task": "studyhall.optimizer.mipro._simtask",
    "create_app": "studyhall.optimizer.service._app",
    "Conflict": "studyhall.optimizer.service._http",
    "Client": "studyhall.optimizer.service._client",
    "ServiceError": "studyhall.optimizer.service._client",
    "RemoteStudy": "studyhall.optimizer.service._remote_study",
    "Workflow": "studyhall.optimizer._workflow",
    "WorkflowError": "studyhall.optimizer._workflow",
    "WorkflowResult": "studyhall.optimizer._workflow",
    "FallbackError": "studyhall.bridge",
    "with_fallbacks": "studyhall.bridge",
}
# Public modules, used as ``events.record(...)``, ``trace.step(...)``.
_MODULES = ("events", "telemetry", "trace")

if TYPE_CHECKING:  # pragma: no cover
    from studyhall.bridge import FallbackError, with_fallbacks
    from studyhall.optimizer import events, telemetry, trace
    from studyhall.optimizer._workflow import Workflow, WorkflowError, WorkflowResult
    from studyhall.optimizer.dspy._lm import dspy_lm
    from studyhall.optimizer.dspy._optimize import StudyhallMIPRO, optimize_dspy
    from studyhall.optimizer.mipro._bootstrap import bootstrap_demos
    from studyhall.optimizer.mipro._evaluate import TooManyErrors
    from studyhall.optimizer.mipro._loop import MiproEvent, MiproLoop
    from studyhall.optimizer.mipro._propose import propose_instructions
    from studyhall.optimizer.mipro._results import FullEval, MiproResult
    from studyhall.optimizer.mipro._simtask import arith_task
    from studyhall.optimizer.optimize._evaluation import Evaluation
    from studyhall.optimizer.optimize._report import OptimizeReport
    from studyhall.optimizer.service._app import create_app
    from studyhall.optimizer.service._client import Client, ServiceError
    from studyhall.optimizer.service._http import Conflict
    from studyhall.optimizer.service._remote_study import RemoteStudy
    from studyhall.optimizer.study._orchestrator import Orchestrator, StudyInfo, make_sampler
    from studyhall.optimizer.study._space import Categorical, Float, Int
    from studyhall.optimizer.study._study import Study, TrialHandle
    from studyhall.optimizer.study._summary import Summary, summarize


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Categorical",
    "Client",
    "Conflict",
    "DuplicateStudy",
    "Evaluation",
    "FallbackError",
    "Float",
    "FullEval",
    "Int",
    "InvalidRequest",
    "MiproEvent",
    "MiproLoop",
    "MiproResult",
    "OptimizeReport",
    "Orchestrator",
    "RemoteStudy",
    "ServiceError",
    "StorageError",
    "Study",
    "StudyInfo",
    "StudyNotFound",
    "StudyhallError",
    "StudyhallMIPRO",
    "Summary",
    "TooManyErrors",
    "TransientStorageError",
    "TrialHandle",
    "TrialNotFound",
    "TrialOwnershipLost",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "arith_task",
    "bootstrap_demos",
    "create_app",
    "dspy_lm",
    "events",
    "make_sampler",
    "optimize_dspy",
    "propose_instructions",
    "summarize",
    "telemetry",
    "trace",
    "with_fallbacks",
]
