"""The report's figure (and per-trial histograms) as Optuna artifacts that optuna-dashboard shows."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

from studyhall.optimizer import Float, Orchestrator
from studyhall.optimizer.telemetry._artifacts import ARTIFACTS_ENV, REPORT_FILE, artifact_dir, attach_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = {"x": Float(0, 1)}


def _metas(target, storage=None):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in some Optuna versions
        return get_all_artifact_meta(target, storage=storage)


def _scored(objective_trial):  # type: ignore[no-untyped-def]
    x = objective_trial.suggest_float("x", 0, 1)
    return [1.0 if i / 10 < x else 0.0 for i in range(10)]


@pytest.mark.slow
def test_the_report_is_one_study_artifact_rewritten_in_place(storage_url, study_name, tmp_path):
    study = Orchestrator(storage_url).create_study(study_name, direction="maximize")
    for scores in ([1, 0, 1, 1], [0, 0, 1, 0]):
        study.tell(study.ask(SPACE), scores=scores)
    where = tmp_path / "arts"
    first = attach_report(study, where, trial_histograms=True)
    assert len(first) == 3  # the study's figure and one histogram per trial
    metas = _metas(study.optuna)
    assert [(m.filename, m.mimetype) for m in metas] == [(REPORT_FILE, "image/png")]
    store = FileSystemArtifactStore(str(where))
    with store.open_reader(metas[0].artifact_id) as f:
        assert f.read(8) == PNG_MAGIC
    attrs = study.storage.optuna.get_study_system_attrs(study._study_id)
    for t in study.trials():  # where optuna-dashboard looks for a finished trial's artifacts
        keys = [k for k in attrs if k.startswith(f"dashboard:artifacts:{t._trial_id}:")]
        assert len(keys) == 1 and '"score-histogram.png"' in attrs[keys[0]]
    study.tell(study.ask(SPACE), scores=[1, 1, 1, 1])
    again = attach_report(study, where)
    assert again == first[:1] and len(_metas(study.optuna)) == 1  # no pile-up of old figures


def test_optimize_attaches_the_report_when_a_folder_is_given(sqlite_url, study_name, tmp_path, monkeypatch):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    study.optimize(_scored, n_trials=2, workers=0, progress=False)
    assert _metas(study.optuna) == []  # nothing configured: no figure rendered, none stored
    study.optimize(_scored, n_trials=2, workers=0, progress=False, artifacts=tmp_path / "a")
    assert [m.filename for m in _metas(study.optuna)] == [REPORT_FILE]
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "env"))
    other = Orchestrator(sqlite_url).create_study(study_name + "-env", direction="maximize")
    other.optimize(_scored, n_trials=1, workers=0, progress=False)
    assert [m.filename for m in _metas(other.optuna)] == [REPORT_FILE] and any((tmp_path / "env").iterdir())


def test_where_the_artifacts_go(tmp_path, monkeypatch):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    assert artifact_dir(f"sqlite:///{tmp_path}/studyhall.db") == tmp_path / "studyhall-artifacts"
    assert artifact_dir("sqlite:///:memory:") is None
    assert artifact_dir("postgresql+psycopg://u@127.0.0.1/test") is None
    assert artifact_dir("postgresql+psycopg://u@127.0.0.1/test", tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "env"))
    assert artifact_dir(f"sqlite:///{tmp_path}/studyhall.db") == tmp_path / "env"


@pytest.mark.slow
def test_report_attach_command(sqlite_url, study_name, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from studyhall.optimizer.cli import _register_commands, app

    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    study.tell(study.ask(SPACE), scores=[1, 0, 1])
    _register_commands()
    out = CliRunner().invoke(
        app, ["report", study_name, "--storage", sqlite_url, "--out", str(tmp_path / "r.png"), "--attach"]
    )
    assert out.exit_code == 0, out.output
    where = artifact_dir(sqlite_url)
    assert where is not None and f"attached 1 picture(s) to study {study_name}" in out.output
    meta = _metas(study.optuna)[0]
    assert Path(where, meta.artifact_id).read_bytes().startswith(PNG_MAGIC)
    assert isinstance(study.optuna, optuna.Study)
