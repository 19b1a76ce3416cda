"""The command line's shared parts: the typer ``app`` every command registers on, options, output helpers."""

from __future__ import annotations

import ipaddress
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from studyhall.storage import InvalidRequest, StudyhallError

app = typer.Typer(
    name="studyhall",
    help="Hyperparameter-optimization orchestration: Optuna studies in SQL, a self-healing "
    "worker pool, rate-limited LLM trials and score distributions per trial.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output is read by people too (CI logs, `| less`): do not crush tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", "-s", help="Storage URL (default: $STUDYHALL_STORAGE, else sqlite:///studyhall.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn studyhall errors into one-line messages: exit 2 for bad input, 1 otherwise."""
    try:
        yield
    except InvalidRequest as exc:
        raise fail(str(exc), 2) from None
    except StudyhallError as exc:
        raise fail(f"{type(exc).__name__}: {exc}", 1) from None


def quiet_optuna() -> None:
    """Keep Optuna's per-trial INFO lines out of the CLI's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def fmt(v: Any, digits: int = 4) -> str:
    """A compact cell: numbers rounded, None as a dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def print_json(data: Any) -> None:
    """JSON on stdout (NaN becomes null)."""
    sys.stdout.write(json.dumps(_clean(data), indent=2, default=str) + "\n")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything
