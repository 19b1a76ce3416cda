"""The ``studyhall`` command line (typer + rich): one module per command.

Each command module registers itself on the typer app of ``_app.py`` when
imported; :func:`main` imports them all and runs it. Bad input exits 2 with a
one-line error, never a traceback::

    studyhall studies | trials NAME | compare NAME A B | demo | worker NAME | serve | dashboard | report NAME
              _studies  _trials      _compare           _demo  _worker       _serve  _dashboard  _report
"""

from __future__ import annotations

import importlib
import sys

import typer

from studyhall.optimizer.cli._app import app, fail

COMMANDS = (
    "_studies",
    "_trials",
    "_compare",
    "_demo",
    "_worker",
    "_serve",
    "_dashboard",
    "_report",
)  # the order of --help


def main() -> None:
    """Console-script entry point: usage errors too are one line (exit 2), not click's boxed usage."""
    _register_commands()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = fail("aborted", 1).exit_code
    except Exception as exc:
        code = _usage_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Exception) -> int:
    # click's UsageError and kin, matched by shape: some typer versions vendor click, others use it.
    message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
    if not callable(message) or not isinstance(exit_code, int):
        raise exc
    if type(exc).__name__ == "NoArgsIsHelpError":  # `studyhall` alone: its message is the help
        exc.show()  # type: ignore[attr-defined]
        return exit_code
    command = getattr(getattr(exc, "ctx", None), "command_path", None) or "studyhall"
    fail(f"{message()} (see `{command} --help`)")
    return exit_code


def _register_commands() -> None:
    # Each command module registers on `app` when it is imported.
    for module in COMMANDS:
        importlib.import_module(f"{__name__}.{module}")


__all__ = ["app", "main"]
