"""The command line's shared parts: the typer ``app`` every command registers on, options, output helpers.

Output is for people and may show what anyone put in a database (study names,
parameters, errors), so nothing printed can drive the terminal: every console
escapes control characters (:class:`SafeConsole`), and text from the database is
passed through :func:`safe` before it goes into rich markup. Errors are one line,
never wrapped, whatever the width of the terminal or pipe.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from studyhall.optimizer.cli._errors import redact, sqlite_path, studyhall_version
from studyhall.storage import InvalidRequest, StudyhallError

if TYPE_CHECKING:
    from studyhall.storage import Storage

app = typer.Typer(
    name="studyhall",
    help="Hyperparameter-optimization orchestration: Optuna studies in SQL, a self-healing "
    "worker pool, rate-limited LLM trials and score distributions per trial.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Bidirectional overrides and line separators reorder or break a terminal's lines as control codes do.
_INVISIBLE = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape_controls(text: str) -> str:
    r"""``text`` with control characters shown as escapes (``\x1b``, ``\n``, ``\u202e``)."""
    if text.isprintable():  # the common case, and fast
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" or ch in _INVISIBLE else ch
        for ch in text
    )


class SafeConsole(Console):
    """A rich Console whose every string (printed, a table's cell or title) has its control characters escaped."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """rich's ``render_str`` on ``text`` with control characters escaped (no escape sequence reaches the terminal)."""
        return super().render_str(escape_controls(text), **kwargs)


# Piped output is read by people too (CI logs, `| less`): do not crush tables to 80 columns.
console = SafeConsole(width=None if sys.stdout.isatty() else 160, emoji=False)
# An error is one line however narrow the terminal or pipe (soft_wrap: rich never inserts a newline).
err_console = SafeConsole(stderr=True, soft_wrap=True, emoji=False, highlight=False)

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", "-s", envvar="STUDYHALL_STORAGE", help="Storage URL (default: sqlite:///studyhall.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def safe(value: object) -> str:
    """Text from a database or a user (a study name, a parameter, an error) as literal text in rich markup."""
    return escape(str(value))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (2 = bad input or a database that cannot be used)."""
    err_console.print(f"[bold red]error:[/] {safe(message)}")
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    err_console.print(f"[bold yellow]warning:[/] {safe(message)}")


@contextmanager
def user_errors(url: str | None = None) -> Iterator[None]:
    """Turn studyhall errors into one-line messages: exit 2 for bad input, 1 otherwise."""
    try:
        yield
    except typer.Exit:
        raise
    except InvalidRequest as exc:
        raise fail(str(exc), 2) from None
    except StudyhallError as exc:
        raise fail(f"{type(exc).__name__}: {exc}", 1) from None


def _default_url() -> str:
    from studyhall.storage import DEFAULT_URL

    return str(DEFAULT_URL)


def open_storage(url: str | None, *, must_exist: bool = False) -> Storage:
    """``connect(url)``, or a one-line error (exit 2) saying why the database cannot be used.

    Args:
        url: the --storage option (the $STUDYHALL_STORAGE default is typer's).
        must_exist: for commands that only read: a SQLite file that is not there is an
            error, not a new database.
    """
    from studyhall.storage import connect

    url = url or _default_url()
    path = sqlite_path(url)
    if must_exist and path is not None and path not in ("", ":memory:") and not Path(path).exists():
        raise fail(
            f"there is no database at {path} (--storage {redact(url)}); check --storage or $STUDYHALL_STORAGE. "
            "Studies are created by `studyhall demo`, `studyhall worker NAME --create` or Orchestrator().create_study"
        )
    try:
        return connect(url)
    except StudyhallError as exc:  # connect says in one line what is wrong and what to do
        raise fail(str(exc)) from None


def quiet_optuna() -> None:
    """Keep Optuna's per-trial INFO lines out of the CLI's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def fmt(v: Any, digits: int = 4) -> str:
    """A compact cell, safe in rich markup: numbers rounded, None as a dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return safe(v)


def print_json(data: Any) -> None:
    """JSON on stdout (NaN becomes null; control characters are escaped by the encoder)."""
    sys.stdout.write(json.dumps(_clean(data), indent=2, default=str) + "\n")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _version(value: bool) -> None:
    if value:
        console.print(f"studyhall {studyhall_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    _version_opt: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print studyhall's version and exit.")
    ] = False,
) -> None:
    """Hyperparameter-optimization orchestration: Optuna studies in SQL, a self-healing worker pool,
    rate-limited LLM trials and score distributions per trial."""
