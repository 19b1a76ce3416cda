"""MiproLoop's answer is the study's selection, and every view shows it in the same words."""

from __future__ import annotations

import html

import optuna
import optuna_dashboard
from mipro_helpers import TASK, make_loop
from typer.testing import CliRunner

from studyhall.optimizer import Orchestrator, summarize
from studyhall.optimizer.cli import _register_commands, app
from studyhall.optimizer.telemetry._report import render_report


def test_the_selection_is_recorded_and_shown_the_same_everywhere(sqlite_url, study_name, tmp_path):  # type: ignore[no-untyped-def]
    result = make_loop(sqlite_url, study_name).run(n_trials=10)
    study = Orchestrator(sqlite_url).load_study(study_name)
    sel = study.selection
    assert sel is not None and sel.source == "full evaluation"
    assert sel.params == result.best_params and sel.score == result.best_full_score and sel.n == len(TASK.valset)
    fe = result.full_evals[sel.full_eval]  # type: ignore[index]
    assert fe.params == sel.params and study.trial(sel.trial).params == sel.params  # type: ignore[arg-type]
    full = summarize([x for x in fe.scores if x is not None])
    assert (sel.ci_low, sel.ci_high, sel.ci_method) == (full.ci_low, full.ci_high, "wilson")
    line = sel.line()
    assert line.startswith("selected by full evaluation: ") and f"on {len(TASK.valset)} examples" in line

    _register_commands()
    for args in (["studies"], ["trials", study_name]):
        out = CliRunner().invoke(app, [*args, "--storage", sqlite_url])
        assert out.exit_code == 0, out.output
        assert line in out.output
    assert f"{sel.trial} (selected)" in CliRunner().invoke(app, ["trials", study_name, "--storage", sqlite_url]).output
    assert html.escape(line) in render_report(study, tmp_path / "r.html").read_text()
    note = optuna_dashboard.get_note(study.optuna)
    assert note.startswith("### Selected answer") and line in note
    trial_note = optuna_dashboard.get_note(optuna.Trial(study.optuna, study.trial_id(sel.trial)))  # type: ignore[arg-type]
    assert "This combination is the study's answer." in trial_note and line in trial_note

    # a resumed run that settles on the same answer leaves the notes as they were
    make_loop(sqlite_url, study_name).run(n_trials=10)
    assert optuna_dashboard.get_note(study.optuna) == note
    c = study.compare("selected", sel.trial)  # type: ignore[arg-type]
    assert not c.paired and "the examples differ" in c.note and c.n_a == len(TASK.valset)
