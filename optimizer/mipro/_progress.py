"""The MIPRO loop's progress bar: trials done, best minibatch mean, the current phase (rich, stderr)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from studyhall.optimizer.study._study import Study
from studyhall.storage._studies import state_counts


class LoopProgress:
    """A rich bar over the whole loop (trials done, best minibatch mean, phase); stderr only."""

    def __init__(self, enabled: bool, study: Study, total: int) -> None:
        self._bar: Any = None
        if not enabled or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._study = study
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(f"mipro {study.name}", total=total, detail="")
        self._phase = ""
        self._stop = threading.Event()
        self._bar.start()
        self._thread = threading.Thread(target=self._poll, name="mipro-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.update()

    def update(self) -> None:
        """Redraw from the study's counts (also called every half second by a thread)."""
        if self._bar is None:
            return
        try:
            counts, best = state_counts(self._study.storage, self._study._study_id)
        except Exception:  # a progress bar must never break the run
            return
        pruned, failed = counts.get("PRUNED", 0), counts.get("FAIL", 0)
        n = pruned + failed + counts.get("COMPLETE", 0)
        detail = f"best minibatch {best:.3f}" if best is not None else ""
        detail += f"  pruned {pruned}" if pruned else ""
        detail += f"  failed {failed}" if failed else ""
        detail += f"  [dim]{self._phase}[/]" if self._phase else ""
        self._bar.update(self._task, completed=n, detail=detail)

    def phase(self, text: str) -> None:
        """Show what the loop is doing besides trials (a full evaluation)."""
        if self._bar is not None:
            self._phase = text
            self.update()

    def close(self) -> None:
        """Stop the polling thread and the bar."""
        if self._bar is not None:
            self._stop.set()
            self._thread.join()
            self._phase = ""
            self.update()
            self._bar.stop()
