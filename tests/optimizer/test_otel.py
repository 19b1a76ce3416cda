"""OpenTelemetry export: trials, trace steps, workflow steps and LLM calls as spans, parented per trial."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from studyhall.optimizer import (  # noqa: E402
    Orchestrator,
    Workflow,
    _otel,  # noqa: E402
    telemetry,
    trace,
)


@pytest.fixture
def spans():  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable_otel(provider)
    try:
        yield exporter
    finally:
        telemetry.disable_otel()
        provider.shutdown()


def test_a_trial_and_what_it_records_become_spans_under_it(sqlite_url, study_name, spans, fake_llm):  # type: ignore[no-untyped-def]
    def objective(trial):  # type: ignore[no-untyped-def]
        x = trial.suggest_float("x", 0, 1)
        trace.step("Thought", {"plan": "ask the model"})
        with trace.span("Action", {"tool": "llm"}):
            answer = fake_llm.chat([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8)
        flow = Workflow([("double", lambda v: v * 2), ("half", lambda v: v / 2)], name="arith")
        flow.run(x)
        return [1.0, 0.0, 1.0 if answer.text else 0.0]

    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    study.optimize(objective, n_trials=1, workers=0, progress=False)

    got = {s.name: s for s in spans.get_finished_spans()}
    trial = got["studyhall.trial"]
    assert trial.attributes["studyhall.study"] == study_name and trial.attributes["studyhall.trial.number"] == 0
    assert trial.attributes["studyhall.trial.state"] == "complete" and trial.attributes["studyhall.trial.scores"] == 3
    model = fake_llm.model
    llm = got[f"chat {model}"]
    assert llm.kind == SpanKind.CLIENT
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.request.model"] == model
    assert llm.attributes["gen_ai.usage.input_tokens"] > 0 and llm.attributes["gen_ai.usage.output_tokens"] > 0
    assert llm.attributes["studyhall.llm.latency_s"] > 0 and llm.end_time - llm.start_time > 0
    action, thought = got["Action"], got["Thought"]
    assert (
        thought.attributes["studyhall.kind"] == "step"
        and '"plan":"ask the model"' in thought.attributes["studyhall.data"]
    )
    flow_span, step_span = got["workflow arith"], got["workflow.step double"]
    # parented per trial: every span is in the trial's trace, the LLM call under its Action span
    assert {s.context.trace_id for s in got.values()} == {trial.context.trace_id}
    assert thought.parent.span_id == action.parent.span_id == flow_span.parent.span_id == trial.context.span_id
    assert llm.parent.span_id == action.context.span_id
    assert (
        step_span.parent.span_id == flow_span.context.span_id
        and got["workflow.step half"].parent.span_id == flow_span.context.span_id
    )


def test_a_failing_step_marks_its_spans_and_the_trial(sqlite_url, study_name, spans):  # type: ignore[no-untyped-def]
    def objective(trial):  # type: ignore[no-untyped-def]
        trial.suggest_float("x", 0, 1)
        Workflow([("boom", lambda v: 1 / 0)], name="bad").run(1)

    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    study.optimize(objective, n_trials=1, workers=0, progress=False)
    got = {s.name: s for s in spans.get_finished_spans()}
    assert got["workflow.step boom"].status.status_code == StatusCode.ERROR
    assert got["workflow bad"].status.status_code == StatusCode.ERROR
    trial = got["studyhall.trial"]
    assert trial.attributes["studyhall.trial.state"] == "fail" and trial.attributes["error.type"] == "WorkflowError"


def test_nothing_is_made_when_opentelemetry_is_not_configured(sqlite_url, study_name):  # type: ignore[no-untyped-def]
    from opentelemetry import trace as otel_trace

    assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)  # no global provider in tests
    assert _otel.tracer() is None and _otel.recorder() is None
    with _otel.span("x") as s:
        assert s is None
