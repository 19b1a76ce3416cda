"""The ``studyhall`` command line (typer + rich): one module per command.

Each command module registers itself on the typer app of ``_app.py`` when
imported; :func:`main` imports them all and runs it. Bad input exits 2 with a
one-line error, never a traceback::

    studyhall studies | trials NAME | demo | worker NAME | serve | dashboard | report NAME
              _studies  _trials      _demo  _worker       _serve  _dashboard  _report
"""

from __future__ import annotations

import importlib

from studyhall.optimizer.cli._app import app

COMMANDS = ("_studies", "_trials", "_demo", "_worker", "_serve", "_dashboard", "_report")  # the order of --help


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    app()


def _register_commands() -> None:
    # Each command module registers on `app` when it is imported.
    for module in COMMANDS:
        importlib.import_module(f"{__name__}.{module}")


__all__ = ["app", "main"]
