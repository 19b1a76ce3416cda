"""studyhall's front door: studies, ask/tell, search spaces and score distributions.

Example:
    >>> from optimizer import Orchestrator, Float, Categorical
    >>> study = Orchestrator().create_study("qa", direction="maximize")  # doctest: +SKIP
    >>> t = study.ask({"temperature": Float(0, 1), "instruction": Categorical(range(8))})  # doctest: +SKIP
    >>> study.tell(t, scores=[1, 0, 1, 1])  # doctest: +SKIP
"""

from bridge import FallbackError, with_fallbacks
from optimizer._optimize import OptimizeReport
from optimizer._orchestrator import Orchestrator, StudyInfo, make_sampler
from optimizer._space import Categorical, Float, Int
from optimizer._study import Evaluation, Study, TrialHandle
from optimizer._summary import Summary, summarize
from optimizer._workflow import Workflow, WorkflowError, WorkflowResult
from optimizer import events, telemetry, trace  # noqa: E402  (modules: events.record, trace.step, ...)
from storage import InvalidRequest, StudyhallError, StudyNotFound, TrialNotFound

__all__ = [
    "Categorical",
    "Evaluation",
    "FallbackError",
    "Float",
    "Int",
    "InvalidRequest",
    "OptimizeReport",
    "Orchestrator",
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
    "events",
    "make_sampler",
    "summarize",
    "telemetry",
    "trace",
    "with_fallbacks",
]
