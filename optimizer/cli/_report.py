"""``studyhall report NAME --out report.html``: the study's distributions as a picture (``--attach``: also for optuna-dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studyhall.optimizer.cli._app import (
    JsonOpt,
    StorageOpt,
    app,
    console,
    fail,
    fmt,
    open_storage,
    print_json,
    quiet_optuna,
    safe,
    user_errors,
)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="The study's name.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write it: .html (figure and tables) or .png.")
    ] = Path("report.html"),
    metric: Annotated[str, typer.Option("--metric", help="The per-example distribution to plot.")] = "score",
    max_trials: Annotated[
        int, typer.Option("--max-trials", min=1, help="At most this many trials on the plot (the best and the latest).")
    ] = 60,
    attach: Annotated[
        bool,
        typer.Option(
            "--attach", help="Also store the figure as an Optuna artifact of the study (optuna-dashboard shows it)."
        ),
    ] = False,
    artifact_dir: Annotated[
        Path | None,
        typer.Option(
            "--artifact-dir",
            help="Where --attach stores it (default: $STUDYHALL_ARTIFACTS, else <db>-artifacts/ beside a SQLite file).",
        ),
    ] = None,
    trial_histograms: Annotated[
        bool, typer.Option("--trial-histograms", help="With --attach: each trial's score histogram too, on the trial.")
    ] = False,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot per-trial score distributions (best trials highlighted), their 95% intervals and LLM latency."""
    from studyhall.optimizer import Orchestrator
    from studyhall.optimizer.telemetry._artifacts import artifact_dir as default_dir
    from studyhall.optimizer.telemetry._artifacts import attach_report
    from studyhall.optimizer.telemetry._report import render_report

    quiet_optuna()
    folder = out.parent
    if not folder.is_dir():
        raise fail(f"cannot write {out}: the folder {folder} does not exist; create it or give another --out")
    st = open_storage(storage, must_exist=True)
    with user_errors(st.url):
        study = Orchestrator(st).load_study(name)
        try:
            path = render_report(study, out, name=metric, max_trials=max_trials)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror or exc}; give another --out") from None
        where = default_dir(st.url, artifact_dir) if attach else None
        if attach and where is None:
            raise fail("--attach needs a folder for the artifacts: pass --artifact-dir or set $STUDYHALL_ARTIFACTS")
        attached = (
            attach_report(study, where, trial_histograms=trial_histograms, max_trials=max_trials) if where else []
        )
    size = path.stat().st_size
    if as_json:
        print_json(
            {
                "study": name,
                "out": str(path),
                "bytes": size,
                "artifacts": attached,
                "artifact_dir": str(where) if where else None,
            }
        )
        return
    if attached:
        console.print(
            f"attached {len(attached)} picture(s) to study {safe(name)} in {safe(where)}: "
            f"run `studyhall dashboard --artifact-dir {safe(where)}` to see them",
            highlight=False,
        )
    console.print(
        f"wrote {safe(path)} ({fmt(size / 1024, 3)} KiB): per-trial {safe(metric)} distributions and LLM latency "
        f"of study {safe(name)}"
    )
