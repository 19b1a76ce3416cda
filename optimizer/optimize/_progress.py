"""The progress bar of ``optimize``: done and failed counts, best value, ETA (rich, on stderr)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from studyhall.optimizer.optimize._report import OptimizeReport


class Progress(Protocol):
    """What ``optimize`` calls on its progress display."""

    def update(self, report: OptimizeReport) -> None:
        """Show the counts so far."""

    def close(self, report: OptimizeReport) -> None:
        """Show the final counts and stop."""


class _NullProgress:
    """No bar (``progress=False`` or stderr is not a terminal)."""

    def update(self, report: OptimizeReport) -> None:
        pass

    def close(self, report: OptimizeReport) -> None:
        pass


class _RichProgress:
    def __init__(self, total: int | None, name: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(name, total=total, detail="ok 0  failed 0  pruned 0")
        self._bar.start()

    def update(self, report: OptimizeReport) -> None:
        bad = report.n_trials - report.completed - report.pruned
        detail = f"ok {report.completed}  failed {bad}  pruned {report.pruned}"
        if report.best_value is not None:
            detail += f"  best {report.best_value:.4g}"
        self._bar.update(self._task, completed=report.n_trials, detail=detail)

    def close(self, report: OptimizeReport) -> None:
        self.update(report)
        self._bar.stop()


def make_progress(enabled: bool, total: int | None, name: str) -> Progress:
    """A rich bar on stderr if ``enabled`` and stderr is a terminal, else a do-nothing one."""
    if not enabled or not sys.stderr.isatty():
        return _NullProgress()
    return _RichProgress(total, name)
