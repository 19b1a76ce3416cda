"""``studyhall trials NAME``: a study's trials with their values, parameters and telemetry."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from studyhall.optimizer.cli._app import (
    JsonOpt,
    StorageOpt,
    app,
    console,
    fmt,
    open_storage,
    print_json,
    quiet_optuna,
    safe,
    user_errors,
)
from studyhall.optimizer.study._summary import interval_text

# user_attr -> column header for the telemetry shown by `studyhall trials`. Per-example scores are
# mostly 0/1, where quantiles say nothing the mean does not: the mean's 95% interval does.
MEAN_CI = "score.ci_low"  # shown as "mean [low, high]"
TRIAL_COLUMNS = {
    "score.n": "n",
    MEAN_CI: "score mean [95% CI]",
    "score.std": "std",
    "llm.latency_s.p50": "lat p50 s",
    "llm.latency_s.p90": "lat p90 s",
    "llm.tokens": "tokens",
}


@app.command()
def trials(
    name: Annotated[str, typer.Argument(help="The study's name.")],
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
    state: Annotated[
        str | None, typer.Option(help="Only trials in this state (complete, fail, pruned, running, waiting).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many trials (the newest).")] = 200,
) -> None:
    """List a study's trials with their values, parameters and telemetry."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    st = open_storage(storage, must_exist=True)
    with user_errors(st.url):
        study = Orchestrator(st).load_study(name)
        rows = study.trials(states=[state] if state else None)[-limit:]
        summary = study.metrics()
        sel = study.selection
    if as_json:
        print_json(
            {
                "summary": summary.as_dict(),
                "selection": sel.as_dict() if sel else None,
                "trials": [
                    {
                        "number": t.number,
                        "state": t.state.name.lower(),
                        "values": t.values,
                        "params": t.params,
                        "user_attrs": t.user_attrs,
                        "duration_s": t.duration.total_seconds() if t.duration else None,
                    }
                    for t in rows
                ],
            }
        )
        return
    present = [c for c in TRIAL_COLUMNS if any(c in t.user_attrs for t in rows)]
    table = Table(
        "#", "state", "value", "params", *(TRIAL_COLUMNS[c] for c in present), "error", title=f"study {safe(name)}"
    )
    for t in rows:
        number = f"{t.number} (selected)" if sel is not None and sel.trial == t.number else str(t.number)
        value = ", ".join(fmt(v) for v in t.values) if t.values else "-"
        params = " ".join(f"{safe(k)}={fmt(v, 3)}" for k, v in t.params.items())
        err = safe(str(t.user_attrs.get("error", ""))[:40])
        table.add_row(number, t.state.name.lower(), value, params, *(_cell(t.user_attrs, c) for c in present), err)
    console.print(table)
    from studyhall.optimizer.telemetry._report import summary_rows

    stats = ("n", "mean", "std", "p50", "p90", "p99")
    block = Table(
        "study summary", *stats, "mean, 95% CI", title=f"{summary.n_complete} of {summary.n_trials} trials complete"
    )
    for label, s in summary_rows(summary):
        ci = interval_text(s.ci_low, s.ci_high, s.ci_method) if s else "-"
        block.add_row(safe(label), *((fmt(getattr(s, k)) for k in stats) if s else ["-"] * len(stats)), ci)
    console.print(block)
    if sel is not None:  # the study's answer, worded as the report, the demo and the dashboard's note word it
        console.print(safe(sel.line()), highlight=False, soft_wrap=True)


def _cell(attrs: dict[str, Any], column: str) -> str:
    if column != MEAN_CI:
        return fmt(attrs.get(column))
    mean = attrs.get("score.mean")
    if not isinstance(mean, (int, float)):
        return "-"
    return f"{mean:.3g} {interval_text(attrs.get('score.ci_low'), attrs.get('score.ci_high'))}"
