"""``studyhall report NAME --out report.html``: the study's distributions as a picture."""

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
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it: .html (figure and tables) or .png.")] = Path("report.html"),
    metric: Annotated[str, typer.Option("--metric", help="The per-example distribution to plot.")] = "score",
    max_trials: Annotated[int, typer.Option("--max-trials", min=1, help="At most this many trials on the plot (the best and the latest).")] = 60,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot per-trial score distributions (best trials highlighted) and LLM latency."""
    from studyhall.optimizer import Orchestrator
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
    size = path.stat().st_size
    if as_json:
        print_json({"study": name, "out": str(path), "bytes": size})
        return
    console.print(
        f"wrote {safe(path)} ({fmt(size / 1024, 3)} KiB): per-trial {safe(metric)} distributions and LLM latency "
        f"of study {safe(name)}"
    )
