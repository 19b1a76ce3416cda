"""``studyhall worker NAME``: run trials of a shared study from this host (parallel trial scripts).

Start it on as many hosts as you like against one PostgreSQL or MySQL database;
``--total N`` caps the study as a whole: the hosts together create exactly N trials
besides retries (a retry re-runs a crashed, hung or stale trial's parameters in its
place), then run what is left in the queue and the retries of the others' last trials.
It exits 1 when it ran trials and none of them completed (a broken objective should
not look like success to a script or a scheduler).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated

import typer

from studyhall.optimizer.cli._app import (
    JsonOpt,
    StorageOpt,
    app,
    console,
    err_console,
    fail,
    fmt,
    open_storage,
    print_json,
    quiet_optuna,
    safe,
    user_errors,
)


@app.command()
def worker(
    name: Annotated[str, typer.Argument(help="The study's name.")],
    objective: Annotated[str, typer.Option("--objective", "-o", help="The objective as package.module:function.")],
    trials: Annotated[
        int | None, typer.Option("--trials", "-n", min=0, help="Trials this process runs (default: no limit).")
    ] = None,
    total: Annotated[
        int | None,
        typer.Option("--total", min=1, help="Stop at this many trials in the study, retries not counted (all hosts)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", "-w", min=0, help="Trials in flight, each in a worker process (0: in this process)."),
    ] = 1,
    trial_timeout: Annotated[
        float | None, typer.Option("--trial-timeout", help="Seconds before a trial's worker is killed.")
    ] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds after which no new trial starts.")] = None,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Re-runs of a crashed or timed-out trial's parameters.")
    ] = 0,
    create: Annotated[bool, typer.Option("--create", help="Create the study if it does not exist.")] = False,
    direction: Annotated[str, typer.Option("--direction", help="minimize or maximize (with --create).")] = "minimize",
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, random, cmaes or nsga2 (with --create).")] = "tpe",
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run trials of study NAME with OBJECTIVE in a worker pool; print what happened."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    if trials is None and total is None and timeout is None:
        raise fail("give --trials N, --total M or --timeout S, or this worker would never stop")
    # Like `python -m`: an objective module beside the caller is importable (and so in the workers).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    st = open_storage(storage)
    with user_errors(st.url):
        orch = Orchestrator(st)
        if create:
            study = orch.create_study(name, direction=direction, sampler=sampler, load_if_exists=True)
        else:
            study = orch.load_study(name)
        try:
            report = study.optimize(
                objective,
                n_trials=trials,
                max_total_trials=total,
                workers=workers,
                trial_timeout=trial_timeout,
                timeout=timeout,
                retries=retries,
                progress=not as_json,
            )
        except KeyboardInterrupt:
            err_console.print("interrupted: the running trials were failed with error 'interrupted'")
            raise typer.Exit(130) from None
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(
            f"study [bold]{safe(name)}[/]: {report.n_trials} trials in {report.elapsed_s:.1f}s: "
            f"{report.completed} completed, {report.failed} failed, {report.timed_out} timed out, "
            f"{report.crashed} crashed, {report.pruned} pruned, {report.retried} retried"
            + (f", {report.lost} taken over by another host while this one stalled" if report.lost else "")
        )
        if report.best_value is not None:
            console.print(f"best value {fmt(report.best_value)} with {safe(report.best_params)}")
    if report.n_trials and not report.completed:
        raise fail(
            f"none of the {report.n_trials} trials this worker ran completed; "
            f"their errors are in `studyhall trials {shlex.quote(name)} --state fail`",
            1,
        )
