"""``studyhall serve``: the HTTP service (uvicorn), refusing a non-loopback address without a token."""

from __future__ import annotations

from typing import Annotated

import typer

from studyhall.optimizer.cli._app import StorageOpt, app, console, fail, is_loopback, quiet_optuna, user_errors

HostOpt = Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")]


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
