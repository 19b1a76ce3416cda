"""``studyhall dashboard``: optuna-dashboard on the same storage (it has no authentication: loopback by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studyhall.optimizer.cli._app import StorageOpt, app, console, fail, open_storage, quiet_optuna, safe, warn
from studyhall.optimizer.service._hosts import is_loopback


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    artifact_dir: Annotated[
        Path | None,
        typer.Option(
            "--artifact-dir",
            help="The studies' pictures (default: $STUDYHALL_ARTIFACTS, else <db>-artifacts/ beside a SQLite file).",
        ),
    ] = None,
) -> None:
    """Run optuna-dashboard on the same storage (trials show their score and latency summaries, studies their report)."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from studyhall.optimizer.telemetry._artifacts import artifact_dir as default_dir

    quiet_optuna()
    st = open_storage(storage)
    if not is_loopback(host):
        warn(
            f"optuna-dashboard has no authentication and {host} is not loopback; "
            "anyone who can reach it can read and edit your studies"
        )
    where = default_dir(st.url, artifact_dir)
    store = None
    if where is not None:
        try:
            where.mkdir(parents=True, exist_ok=True)  # the dashboard can upload there too
        except OSError as exc:
            raise fail(f"cannot use --artifact-dir {where}: {exc.strerror or exc}; pass another folder") from None
        store = FileSystemArtifactStore(str(where))
    shown = f", artifacts in {safe(where)}" if where is not None else ""
    console.print(f"optuna-dashboard for {safe(repr(st))} on http://{safe(host)}:{port}{shown}", highlight=False)
    run_server(st.optuna, host=host, port=port, artifact_store=store)
