"""Workflow: named steps run in order, each output feeding the next, traced as events.

::

    Workflow([("retrieve", f), ("generate", g)]).run(x)
      event workflow.run  {workflow, input}             ... {output, duration_s}
        ├── event workflow.step {step: retrieve, input}  ... {output, duration_s}
        │     └── whatever f records (trace.step, a nested workflow)
        └── event workflow.step {step: generate, input}  ... {output, duration_s}

A failing step raises WorkflowError naming the step, chained to the cause and
carrying ``.trace`` (the steps so far). The events go where :mod:`optimizer.trace`
sends them: the ``storage`` given, else the enclosing scope (a trial, an outer
workflow, a pool task's channel), else nowhere but memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from studyhall.optimizer import _otel, trace
from studyhall.storage import InvalidRequest, Storage, StudyhallError

RUN = "workflow.run"
STEP = "workflow.step"


class WorkflowError(StudyhallError, RuntimeError):
    """A workflow step failed; ``step`` names it, ``__cause__`` is the error, ``trace`` the steps so far."""

    def __init__(
        self,
        message: str,
        *,
        workflow: str = "",
        step: str = "",
        index: int = -1,
        correlation_id: str | None = None,
        trace: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.step = step
        self.index = index
        self.correlation_id = correlation_id
        self.trace = trace or []

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled across a worker pipe with its attributes (and its cause's text in the message).
        return (
            _rebuild,
            (str(self), self.workflow, self.step, self.index, self.correlation_id, self.trace),
        )


def _rebuild(
    message: str, workflow: str, step: str, index: int, correlation_id: str | None, steps: list[dict[str, Any]]
) -> WorkflowError:
    return WorkflowError(message, workflow=workflow, step=step, index=index, correlation_id=correlation_id, trace=steps)


@dataclass(frozen=True)
class StepResult:
    """One step of a finished run: its input, output, duration and event id."""

    name: str
    input: Any
    output: Any
    duration_s: float
    event_id: int | str | None = None


@dataclass(frozen=True)
class WorkflowResult:
    """A finished run: the last step's output, every step, and the trace's correlation id."""

    output: Any
    steps: list[StepResult] = field(default_factory=list)
    correlation_id: str | None = None


class Workflow:
    """Steps run in order, each output feeding the next; traced as one event per run and per step.

    A workflow is itself callable (``wf(x)`` returns ``wf.run(x).output``), so it
    can be a step of another workflow; :meth:`as_objective` makes it a study objective.

    Example:
        >>> wf = Workflow([("retrieve", lambda q: [q, "doc"]), ("generate", len)], name="rag")
        >>> wf.run("2+2?").output
        2
    """

    def __init__(
        self, steps: Iterable[tuple[str, Callable[[Any], Any]] | Callable[[Any], Any]], name: str | None = None
    ) -> None:
        parsed: list[tuple[str, Callable[[Any], Any]]] = []
        for i, item in enumerate(steps):
            step_name: object  # checked below: a tuple or the callable's attribute may hold anything
            if isinstance(item, tuple) and len(item) == 2:
                step_name, fn = item
            elif callable(item):
                step_name, fn = getattr(item, "name", None) or getattr(item, "__name__", f"step{i}"), item
            else:
                raise InvalidRequest(f"workflow step {i} must be (name, callable) or a callable; got {item!r:.80}")
            if not isinstance(step_name, str) or not step_name:
                raise InvalidRequest(f"workflow step {i} needs a non-empty name; got {step_name!r:.60}")
            if not callable(fn):
                raise InvalidRequest(f"workflow step {step_name!r} is not callable: {fn!r:.80}")
            parsed.append((step_name, fn))
        if not parsed:
            raise InvalidRequest("a workflow needs at least one step")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidRequest(f"a workflow name is a non-empty string; got {name!r:.60}")
        self.steps = parsed
        self.name = name or "workflow"

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={[n for n, _ in self.steps]})"

    def __call__(self, input: Any) -> Any:
        """Run the workflow and return its output (so it can be a step of another)."""
        return self.run(input).output

    def run(
        self, input: Any, storage: Storage | str | None = None, correlation_id: str | None = None
    ) -> WorkflowResult:
        """Run every step in order on ``input``; raise WorkflowError naming the step that failed."""
        if storage is None and correlation_id is None:
            return self._run(input)  # inside the enclosing trace, if any
        outer = trace.current()
        with trace.scope(
            storage if storage is not None else outer.storage, correlation_id=correlation_id, trial=outer.trial_id
        ):
            return self._run(input)

    def _run(self, input: Any) -> WorkflowResult:
        with _otel.span(f"workflow {self.name}", {"studyhall.kind": "workflow", "studyhall.workflow": self.name}):
            return self._run_steps(input)

    def _run_steps(self, input: Any) -> WorkflowResult:
        outer = trace.current()
        run_id = trace._emit(outer, RUN, self.name, {"input": trace.summarize_value(input)}, kind="workflow")
        inside = outer.child(run_id)
        token = trace._current.set(inside)
        started = time.perf_counter()
        results: list[StepResult] = []
        value = input
        try:
            for index, (step_name, fn) in enumerate(self.steps):
                step_id = trace._emit(
                    inside,
                    STEP,
                    step_name,
                    {"input": trace.summarize_value(value)},
                    kind="step",
                    workflow=self.name,
                    index=index,
                )
                step_token = trace._current.set(inside.child(step_id))
                t0 = time.perf_counter()
                try:
                    with _otel.span(
                        f"workflow.step {step_name}",
                        {
                            "studyhall.kind": "workflow.step",
                            "studyhall.workflow": self.name,
                            "studyhall.step.index": index,
                        },
                    ):
                        out = fn(value)
                except Exception as exc:
                    took = time.perf_counter() - t0
                    error = trace.describe(exc)
                    inside.steps.append({"name": step_name, "error": error[: trace.TRACE_STR]})
                    trace.close(inside, step_id, {"error": error[: trace.EVENT_STR], "duration_s": round(took, 6)})
                    trace.close(
                        outer,
                        run_id,
                        {"error": f"step {step_name!r} failed", "duration_s": round(time.perf_counter() - started, 6)},
                    )
                    raise WorkflowError(
                        f"workflow {self.name!r} failed at step {index} {step_name!r}: {error}",
                        workflow=self.name,
                        step=step_name,
                        index=index,
                        correlation_id=inside.correlation_id,
                        trace=list(inside.steps),
                    ) from exc
                finally:
                    trace._current.reset(step_token)
                took = time.perf_counter() - t0
                trace.close(inside, step_id, {"output": trace.summarize_value(out), "duration_s": round(took, 6)})
                results.append(StepResult(step_name, value, out, took, step_id))
                value = out
        finally:
            trace._current.reset(token)
        trace.close(
            outer,
            run_id,
            {"output": trace.summarize_value(value), "duration_s": round(time.perf_counter() - started, 6)},
        )
        return WorkflowResult(value, results, inside.correlation_id)

    def as_objective(
        self,
        input: Any = None,
        *,
        make_input: Callable[[Any], Any] | None = None,
        score: Callable[[Any], Any] | None = None,
    ) -> Callable[[Any], Any]:
        """An objective for ``study.optimize``: run on ``input`` (or ``make_input(trial)``), return ``score(output)``.

        ``make_input`` receives the trial, so it can ``suggest_*`` parameters; the
        output (or ``score(output)``) must be what an objective returns: a float, a
        sequence of per-example scores, or an Evaluation.
        """
        return _WorkflowObjective(self, input, make_input, score)


@dataclass(frozen=True)
class _WorkflowObjective:
    """A picklable objective that runs a workflow (a class, not a closure, so pools can ship it)."""

    workflow: Workflow
    input: Any
    make_input: Callable[[Any], Any] | None
    score: Callable[[Any], Any] | None

    def __call__(self, trial: Any) -> Any:
        x = self.make_input(trial) if self.make_input is not None else self.input
        out = self.workflow.run(x).output
        return self.score(out) if self.score is not None else out
