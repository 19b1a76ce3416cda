"""What a tell adds besides the registry: a failed trial's last steps and optuna-dashboard's note.

The note is a markdown table of the trial's distributions; ``before_tell`` hands
``Study.tell`` a callback that writes it in the tell's own transaction
(``storage/_notes.py`` writes it as optuna-dashboard does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from studyhall.optimizer.events._steps import trial_steps
from studyhall.optimizer.study._summary import FIELDS, interval_text
from studyhall.storage._notes import note_writer

if TYPE_CHECKING:
    from optuna.trial import TrialState

    from studyhall.storage._trials import InTransaction


def before_tell(
    study_id: int,
    trial_id: int,
    number: int,
    state: TrialState,
    attrs: dict[str, Any],
    rows: Sequence[tuple[str, Mapping[str, Any], Any]],
) -> InTransaction | None:
    """Add a failed trial's ``trace``; return the dashboard-note write for the telemetry transaction."""
    steps = trial_steps(trial_id, clear=True)
    if state.name == "FAIL" and steps and "trace" not in attrs:
        attrs["trace"] = steps
    if not rows:
        return None
    body = trial_note(number, rows, attrs)
    return note_writer(study_id, trial_id, body)


def trial_note(number: int, rows: Sequence[tuple[str, Mapping[str, Any], Any]], attrs: Mapping[str, Any]) -> str:
    """The markdown note optuna-dashboard shows for a trial: its distributions as a table."""
    lines = [
        f"### Trial {number}: distributions",
        "",
        "| metric | " + " | ".join(FIELDS) + " | sem | mean, 95% CI |",
        "|---" * (len(FIELDS) + 3) + "|",
    ]
    for name, summary, _ in rows:
        cells = [_cell(summary.get(k)) for k in FIELDS]
        cells += [
            _cell(summary.get("sem")),
            interval_text(summary.get("ci_low"), summary.get("ci_high"), summary.get("ci_method")),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = {
        k: v for k, v in attrs.items() if k.startswith("llm.") and not any(k.startswith(n + ".") for n, _, _ in rows)
    }
    if totals:
        lines += ["", ", ".join(f"{k}: {_cell(v)}" for k, v in sorted(totals.items()))]
    if attrs.get("error"):
        lines += ["", f"**error**: {str(attrs['error'])[:300]}"]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)
