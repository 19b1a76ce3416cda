"""The study's selected answer: one record, shown the same way by the CLI, the report, the demo and optuna-dashboard.

::

    MiproLoop._settle() ──> study.select(params, scores=<full-valset scores>, trial=, full_eval=)
      ──> study user attr "studyhall:selection"        (Selection.as_dict(); read by study.selection)
      ──> optuna-dashboard: a study note at the top of the study page, and a line in
          the note of the selected combination's trial (and of a trial it supersedes)
    studyhall studies / trials / report / demo ──> Selection.line()

"Best trial" is Optuna's: the trial with the best value, here a minibatch mean of a
few dozen examples. "Selected" is what a loop chose by something else, e.g. the best
score on the whole valset; where they differ, the selection is the answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from studyhall.optimizer.study._summary import Summary, interval_text, summarize
from studyhall.storage import InvalidRequest, retrying
from studyhall.storage._notes import write_trial_note

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study

SELECTION_ATTR = "studyhall:selection"
NOTE_HEAD = "### Selected answer"
NOTE_END = "\n\n---\n"


@dataclass(frozen=True)
class Selection:
    """What a study settled on: ``params`` and their ``score`` (mean of ``n`` examples) with its 95% interval.

    ``trial`` is a trial with these params (None if none has them); ``source`` says how
    it was chosen (``"full evaluation"``...); ``full_eval`` indexes MiproLoop's full
    evaluation it comes from (``compare(..., "full:N")``).
    """

    params: dict[str, Any]
    score: float
    ci_low: float
    ci_high: float
    n: int
    trial: int | None = None
    source: str = ""
    full_eval: int | None = None
    metric: str = "score"
    ci_method: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what is stored as the study user attribute)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        """Rebuild a Selection from :meth:`as_dict` output."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def line(self) -> str:
        """The selection in one line: the same text in the CLI, the report, the demo and the dashboard."""
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        where = f"trial {self.trial}" if self.trial is not None else "no trial"
        how = f" by {self.source}" if self.source else ""
        ci = interval_text(self.ci_low, self.ci_high, self.ci_method)
        return f"selected{how}: {params} ({where}), {self.metric} {self.score:.4g} {ci} on {self.n} examples"


def select(
    study: Study,
    params: Mapping[str, Any],
    *,
    scores: Sequence[float] | np.ndarray | Summary,
    trial: int | None = None,
    source: str = "",
    full_eval: int | None = None,
    metric: str = "score",
) -> Selection:
    """Record ``params`` as the study's selection (``Study.select`` calls this)."""
    if not isinstance(params, Mapping) or not params:
        raise InvalidRequest("select needs the chosen params as a non-empty dict")
    s = scores if isinstance(scores, Summary) else summarize(scores)
    if trial is not None:
        study.trial_id(trial)  # TrialNotFound for a trial the study does not have
    sel = Selection(
        params={str(k): _plain(v) for k, v in params.items()},
        score=s.mean,
        ci_low=s.ci_low,
        ci_high=s.ci_high,
        n=s.n,
        trial=trial,
        source=source,
        full_eval=full_eval,
        metric=metric,
        ci_method=s.ci_method,
    )
    before = selection(study)
    if before == sel:
        return sel  # a resumed run that settles on the same answer writes nothing again
    retrying(study.storage.optuna.set_study_user_attr, study._study_id, SELECTION_ATTR, sel.as_dict())
    _write_notes(study, sel, before)
    return sel


def selection(study: Study) -> Selection | None:
    """The study's selection, or None if nothing selected one."""
    d = retrying(study.storage.optuna.get_study_user_attrs, study._study_id).get(SELECTION_ATTR)
    return Selection.from_dict(d) if isinstance(d, Mapping) else None


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def study_note(sel: Selection, best: tuple[int, float] | None) -> str:
    """The selection block at the top of the study's optuna-dashboard note."""
    lines = [NOTE_HEAD, "", f"**{sel.line()}**", ""]
    if best is not None:
        number, value = best
        same = sel.trial == number
        lines.append(
            f"Optuna's *best trial* is trial {number} (value {value:.4g}, the mean of its own minibatch)"
            + (
                ", the selected one."
                if same
                else "; the selection above was chosen on more examples and is the answer."
            )
        )
    return "\n".join(lines) + NOTE_END


def _write_notes(study: Study, sel: Selection, before: Selection | None) -> None:
    import optuna_dashboard

    best = None
    if len(study.directions) == 1:
        try:
            bt = study.optuna.best_trial
            best = (bt.number, float(bt.value)) if bt.value is not None and math.isfinite(bt.value) else None
        except ValueError:
            best = None
    old = optuna_dashboard.get_note(study.optuna)
    if old.startswith(NOTE_HEAD) and NOTE_END in old:  # the previous selection's block: replaced
        old = old.split(NOTE_END, 1)[1]
    optuna_dashboard.save_note(study.optuna, study_note(sel, best) + old)
    if before is not None and before.trial is not None and before.trial != sel.trial:
        _append_trial_note(study, before.trial, f"**No longer selected**: the selection moved to trial {sel.trial}.")
    if sel.trial is not None and (before is None or before.trial != sel.trial or before.score != sel.score):
        _append_trial_note(study, sel.trial, f"**This combination is the study's answer.** {sel.line()}")


def _append_trial_note(study: Study, number: int, text: str) -> None:
    trial_id = study.trial_id(number)
    study.storage.transaction(lambda conn: write_trial_note(conn, study._study_id, trial_id, text))
