"""The ``studyhall`` command line (typer + rich).

Commands live beside the feature they drive (``optimizer/_cli_*.py``) and register
themselves on :data:`app`; bad input exits 2 with a one-line error, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

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

F = TypeVar("F", bound=Callable[..., Any])


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


@app.command()
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    with user_errors():
        infos = Orchestrator(storage).list_studies()
    if as_json:
        print_json([i.__dict__ for i in infos])
        return
    if not infos:
        console.print("no studies yet: create one with Orchestrator().create_study(...) or `studyhall demo`")
        return
    table = Table("study", "directions", "trials", "best value")
    for i in infos:
        table.add_row(i.name, ", ".join(i.directions), str(i.n_trials), fmt(i.best_value))
    console.print(table)


# user_attr -> column header for the telemetry shown by `studyhall trials`.
TRIAL_COLUMNS = {
    "score.n": "n",
    "score.p50": "p50",
    "score.p90": "p90",
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
    state: Annotated[str | None, typer.Option(help="Only trials in this state (complete, fail, pruned, running, waiting).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many trials (the newest).")] = 200,
) -> None:
    """List a study's trials with their values, parameters and telemetry."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    with user_errors():
        study = Orchestrator(storage).load_study(name)
        rows = study.trials(states=[state] if state else None)[-limit:]
        summary = study.metrics()
    if as_json:
        print_json(
            {
                "summary": summary.as_dict(),
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
    table = Table("#", "state", "value", "params", *(TRIAL_COLUMNS[c] for c in present), "error", title=f"study {name}")
    for t in rows:
        value = ", ".join(fmt(v) for v in t.values) if t.values else "-"
        params = " ".join(f"{k}={fmt(v, 3)}" for k, v in t.params.items())
        err = str(t.user_attrs.get("error", ""))[:40]
        table.add_row(str(t.number), t.state.name.lower(), value, params, *(fmt(t.user_attrs.get(c)) for c in present), err)
    console.print(table)
    from studyhall.optimizer.telemetry._report import summary_rows

    stats = ("n", "mean", "std", "p50", "p90", "p99")
    block = Table("study summary", *stats, title=f"{summary.n_complete} of {summary.n_trials} trials complete")
    for label, s in summary_rows(summary):
        block.add_row(label, *((fmt(getattr(s, k)) for k in stats) if s else ["-"] * len(stats)))
    console.print(block)


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    app()


def _register_commands() -> None:
    # Each feature's commands register on `app` when their module is imported.
    import importlib

    for module in ("studyhall.optimizer.cli._demo", "studyhall.optimizer.cli._worker", "studyhall.optimizer.cli._serve", "studyhall.optimizer.cli._report"):
        importlib.import_module(module)


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's app: commands register on `optimizer.cli.app`, not `__main__.app`.
    from studyhall.optimizer.cli import main as _main

    _main()
