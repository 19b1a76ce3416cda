"""``studyhall dashboard``: optuna-dashboard on the same storage (it has no authentication: loopback by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from studyhall.optimizer.cli._app import StorageOpt, app, console, open_storage, quiet_optuna, safe, warn
from studyhall.optimizer.service._hosts import is_loopback


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Run optuna-dashboard on the same storage (trials show their score and latency summaries)."""
    from optuna_dashboard import run_server

    quiet_optuna()
    st = open_storage(storage)
    if not is_loopback(host):
        warn(
            f"optuna-dashboard has no authentication and {host} is not loopback; "
            "anyone who can reach it can read and edit your studies"
        )
    console.print(f"optuna-dashboard for {safe(repr(st))} on http://{safe(host)}:{port}", highlight=False)
    run_server(st.optuna, host=host, port=port)
