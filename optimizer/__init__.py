"""studyhall's front door: studies, ask/tell, search spaces and score distributions.

Example:
    >>> from studyhall.optimizer import Orchestrator, Float, Categorical
    >>> study = Orchestrator().create_study("qa", direction="maximize")  # doctest: +SKIP
    >>> t = study.ask({"temperature": Float(0, 1), "instruction": Categorical(range(8))})  # doctest: +SKIP
    >>> study.tell(t, scores=[1, 0, 1, 1])  # doctest: +SKIP
"""

import typing

from studyhall.bridge import FallbackError, with_fallbacks
from studyhall.optimizer import events, telemetry, trace  # modules: events.record, trace.step, ...
from studyhall.optimizer._workflow import Workflow, WorkflowError, WorkflowResult
from studyhall.optimizer.optimize._report import OptimizeReport
from studyhall.optimizer.study._orchestrator import Orchestrator, StudyInfo, make_sampler
from studyhall.optimizer.study._space import Categorical, Float, Int
from studyhall.optimizer.study._study import Evaluation, Study, TrialHandle
from studyhall.optimizer.study._summary import Summary, summarize
from studyhall.storage import InvalidRequest, StudyhallError, StudyNotFound, TrialNotFound

# The HTTP service and its client load on first use: fastapi and httpx would add
# a third of a second to every `import optimizer`, pool workers included.
_LAZY = {
    "Client": "studyhall.optimizer.service._client",
    "RemoteStudy": "studyhall.optimizer.service._client",
    "ServiceError": "studyhall.optimizer.service._client",
    "create_app": "studyhall.optimizer.service._app",
    "MiproLoop": "studyhall.optimizer.mipro._loop",
    "MiproResult": "studyhall.optimizer.mipro._loop",
    "arith_task": "studyhall.optimizer.mipro._simtask",
}

if typing.TYPE_CHECKING:  # pragma: no cover
    from studyhall.optimizer.mipro._loop import MiproLoop, MiproResult
    from studyhall.optimizer.mipro._simtask import arith_task
    from studyhall.optimizer.service._app import create_app
    from studyhall.optimizer.service._client import Client, RemoteStudy, ServiceError


def __getattr__(name: str) -> object:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studyhall.optimizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Categorical",
    "Client",
    "Evaluation",
    "FallbackError",
    "Float",
    "Int",
    "InvalidRequest",
    "MiproLoop",
    "MiproResult",
    "OptimizeReport",
    "Orchestrator",
    "RemoteStudy",
    "ServiceError",
    "Study",
    "StudyInfo",
    "StudyNotFound",
    "StudyhallError",
    "Summary",
    "TrialHandle",
    "TrialNotFound",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "arith_task",
    "create_app",
    "events",
    "make_sampler",
    "summarize",
    "telemetry",
    "trace",
    "with_fallbacks",
]
