"""``studyhall serve`` (the HTTP service) and ``studyhall dashboard`` (optuna-dashboard)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from studyhall.optimizer.cli import StorageOpt, app, console, err_console, fail, quiet_optuna, user_errors

HostOpt = Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


@app.command()
def serve(
    storage: StorageOpt = None,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(envvar="STUDYHALL_TOKEN", show_envvar=True, help="Bearer token every request but /healthz must carry."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the create-study / ask / tell API over HTTP (docs at /docs, schema at /openapi.json)."""
    import uvicorn

    from studyhall.optimizer.service._app import create_app

    if not token and not is_loopback(host):
        raise fail(
            f"refusing to serve on {host} without a token: anyone who can reach it could change your studies. "
            "Pass --token T or set STUDYHALL_TOKEN (clients send 'Authorization: Bearer T'), "
            "or bind 127.0.0.1"
        )
    quiet_optuna()
    with user_errors():
        service = create_app(storage, token or None)
    st = service.state.storage
    console.print(
        f"studyhall serving {st!r} on http://{host}:{port} (docs: /docs){' with a token' if token else ''}",
        highlight=False,
    )
    uvicorn.run(service, host=host, port=port, log_level=log_level.lower())


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Run optuna-dashboard on the same storage (trials show their score and latency summaries)."""
    from optuna_dashboard import run_server

    from studyhall.storage import connect

    quiet_optuna()
    with user_errors():
        st = connect(storage)
    if not is_loopback(host):
        err_console.print(
            f"[bold yellow]warning:[/] optuna-dashboard has no authentication and {host} is not loopback; "
            "anyone who can reach it can read and edit your studies"
        )
    console.print(f"optuna-dashboard for {st!r} on http://{host}:{port}", highlight=False)
    run_server(st.optuna, host=host, port=port)
