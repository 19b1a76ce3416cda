"""``studyhall serve``: the HTTP service (uvicorn), refusing a non-loopback address without a token."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from studyhall.optimizer.cli._app import StorageOpt, app, console, fail, open_storage, quiet_optuna, safe, user_errors
from studyhall.optimizer.service._hosts import is_loopback
from studyhall.optimizer.service._limits import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    HTTP_IMPLS,
    LOG_LEVELS,
    MAX_CONNECTIONS,
)

HostOpt = Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")]
LogLevel = enum.Enum("LogLevel", {name: name for name in LOG_LEVELS}, type=str)  # type: ignore[misc]
INFO = LogLevel("info")
HttpImpl = enum.Enum("HttpImpl", {name: name for name in HTTP_IMPLS}, type=str)  # type: ignore[misc]
HTTPTOOLS = HttpImpl("httptools")


@app.command()
def serve(
    storage: StorageOpt = None,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="STUDYHALL_TOKEN", show_envvar=True, help="Bearer token every request but /healthz must carry."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="A host name clients reach the service by, besides localhost/127.0.0.1/[::1] (repeatable; '*': any). "
            "Without a token only these are answered; with a token, any name unless this is given.",
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a connection may take to send a request's headers.")
    ] = HEADER_TIMEOUT_S,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request body may take to arrive; slower ones are answered 408.")
    ] = BODY_TIMEOUT_S,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at most; more are answered 503 and closed.")
    ] = MAX_CONNECTIONS,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False, help="uvicorn's log level.")] = INFO,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Service processes answering on the one port; 1 serves from this process. More is faster "
            "on several cores, but each /metrics scrape then shows one process's counters (docs/service.md).",
        ),
    ] = 1,
    http: Annotated[
        HttpImpl,
        typer.Option(
            case_sensitive=False, help="HTTP/1.1 parser: httptools (C, faster) or h11 (pure Python); same limits."
        ),
    ] = HTTPTOOLS,
) -> None:
    """Serve the create-study / ask / tell API over HTTP (docs at /docs, schema at /openapi.json)."""
    from studyhall.optimizer.service._app import create_app
    from studyhall.optimizer.service._server import serve as run_server

    if not token and not is_loopback(host):
        raise fail(
            f"refusing to serve on {host} without a token: anyone who can reach it could change your studies. "
            "Pass --token T or set STUDYHALL_TOKEN (clients send 'Authorization: Bearer T'), "
            "or bind 127.0.0.1"
        )
    quiet_optuna()
    st = open_storage(storage)  # checks (and migrates) the database once, before any worker starts
    with user_errors(st.url):
        service = create_app(st, token or None, body_timeout=body_timeout, allowed_hosts=allow_host)
    n = workers
    console.print(
        f"studyhall serving {safe(repr(st))} on http://{safe(host)}:{port} (docs: /docs)"
        f"{' with a token' if token else ''}{f' in {n} worker processes' if n > 1 else ''}",
        highlight=False,
    )
    if n == 1:
        run_server(
            service,
            host,
            port,
            log_level=log_level.value,
            header_timeout=header_timeout,
            max_connections=max_connections,
            http=http.value,
        )
        return
    from studyhall.optimizer.service._workers import WorkerSettings, run_workers

    del service  # each worker builds its own app on its own connection to the database
    st.close()
    settings = WorkerSettings(
        storage=st,
        token=token or None,
        body_timeout=body_timeout,
        allowed_hosts=allow_host,
        log_level=log_level.value,
        header_timeout=header_timeout,
        max_connections=max_connections,
        http=http.value,
    )
    status = run_workers(settings, host, port, n)
    if status:
        raise typer.Exit(status)
