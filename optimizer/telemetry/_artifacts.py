"""Pictures where people look: the report's figure as an Optuna artifact that optuna-dashboard shows.

::

    optimize(artifacts=DIR) / MiproLoop(artifacts=DIR).run() / studyhall report NAME --attach
      ──> render_png(study) ──> optuna.artifacts.upload_artifact(FileSystemArtifactStore(DIR), study)
          (once; later reports rewrite the same artifact, so reruns do not pile up copies)
      ──> opt-in: each trial's score histogram, uploaded to the trial
    studyhall dashboard ──> optuna-dashboard --artifact-dir DIR (the same default)

Where: ``artifacts=`` / ``--artifact-dir``, else ``$STUDYHALL_ARTIFACTS``, else for a
SQLite file ``<name>-artifacts/`` beside it (``studyhall.db`` -> ``studyhall-artifacts/``);
other databases need one of the first two (the pictures are files, not rows).
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyhall.storage import InvalidRequest, retrying

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

    from studyhall.optimizer.study._study import Study

_log = logging.getLogger("studyhall.telemetry")
ARTIFACTS_ENV = "STUDYHALL_ARTIFACTS"
REPORT_FILE = "studyhall-report.png"
HISTOGRAM_FILE = "score-histogram.png"
_PREFIX = "artifacts:"  # optuna.artifacts' system attribute prefix (what optuna-dashboard lists)
_TRIAL_PREFIX = "dashboard:artifacts:"  # optuna-dashboard's study attribute for a trial's artifacts


def artifact_dir(url: str | None, given: str | Path | None = None) -> Path | None:
    """Where a study's pictures go: ``given``, else ``$STUDYHALL_ARTIFACTS``, else beside a SQLite file; None: nowhere."""
    if given is not None and str(given):
        return Path(given)
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env)
    from studyhall.optimizer.cli._errors import sqlite_path  # the CLI's reading of a SQLite URL, without SQLAlchemy

    path = sqlite_path(url or "")
    if path in (None, "", ":memory:"):
        return None
    db = Path(path)
    return db.with_name(f"{db.stem}-artifacts")


def attach_report(
    study: Study, directory: str | Path, *, trial_histograms: bool = False, max_trials: int = 60
) -> list[str]:
    """Store the report's figure (and, with ``trial_histograms``, each trial's score histogram) as artifacts.

    Returns the artifact ids written. The figure is one artifact of the study, named
    ``studyhall-report.png``, rewritten in place by later calls.
    """
    from studyhall.optimizer.telemetry._report import render_png

    store = _store(directory)
    png = render_png(study, study.metrics(), max_trials)
    ids = [_put(store, study, None, REPORT_FILE, png)]
    if trial_histograms:
        from studyhall.storage._trials import read_study_samples

        samples = read_study_samples(study.storage, study._study_id, "score")
        for number in sorted(samples)[-max_trials:]:
            if samples[number].size:
                ids.append(_put(store, study, number, HISTOGRAM_FILE, histogram_png(samples[number], number)))
    return ids


def attach_if_configured(study: Study, given: str | Path | None | bool) -> list[str]:
    """:func:`attach_report` at the end of a run when ``given`` or ``$STUDYHALL_ARTIFACTS`` names a folder.

    ``given=False``: never (a loop's inner rounds). The run's work is done by then, so a
    figure that cannot be written is a warning, not an error.
    """
    if given is False:
        return []
    where = (
        Path(given)
        if isinstance(given, (str, Path))
        else (Path(os.environ[ARTIFACTS_ENV]) if os.environ.get(ARTIFACTS_ENV) else None)
    )
    if where is None or not study.trials(states=["complete", "pruned"]):
        return []
    try:
        return attach_report(study, where)
    except Exception as exc:  # noqa: BLE001 - the pictures are extra; the trials are already stored
        _log.warning(
            "could not attach the report of study %r to %s (%s: %s)", study.name, where, type(exc).__name__, exc
        )
        return []


def histogram_png(scores: Any, number: int) -> bytes:
    """One trial's per-example score histogram with its mean and 95% interval, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from studyhall.optimizer.study._summary import interval_text, summarize

    s = summarize(scores)
    fig = Figure(figsize=(5, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(
        [(lo + hi) / 2 for lo, hi, _ in s.histogram],
        [c for _, _, c in s.histogram],
        width=[(hi - lo) * 0.9 for lo, hi, _ in s.histogram],
        color="#7570b3",
    )
    ax.axvspan(s.ci_low, s.ci_high, color="#1b9e77", alpha=0.2)
    ax.axvline(s.mean, color="#1b9e77")
    ax.set_title(
        f"trial {number}: score over {s.n} examples, mean {s.mean:.3g} {interval_text(s.ci_low, s.ci_high)}", fontsize=9
    )
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _store(directory: str | Path) -> FileSystemArtifactStore:
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot use {path} for artifacts: {exc.strerror or exc}; pass another folder") from exc
    return FileSystemArtifactStore(str(path))


def _put(store: FileSystemArtifactStore, study: Study, number: int | None, filename: str, data: bytes) -> str:
    """Write ``data`` as the study's (or trial ``number``'s) artifact ``filename``: in place if it exists.

    The metadata is what ``optuna.artifacts.upload_artifact`` writes for a study
    (``artifacts:<id>``); a finished trial takes no new system attributes, so its
    artifacts use optuna-dashboard's study-level key ``dashboard:artifacts:<trial id>:<id>``.
    """
    st = study.storage.optuna
    prefix = _PREFIX if number is None else f"{_TRIAL_PREFIX}{study.trial_id(number)}:"
    for key, value in st.get_study_system_attrs(study._study_id).items():
        meta = json.loads(value) if key.startswith(prefix) and isinstance(value, str) else None
        if isinstance(meta, dict) and meta.get("filename") == filename:
            store.write(meta["artifact_id"], io.BytesIO(data))
            return str(meta["artifact_id"])
    artifact_id = str(uuid.uuid4())
    store.write(artifact_id, io.BytesIO(data))
    meta = {"artifact_id": artifact_id, "filename": filename, "mimetype": "image/png", "encoding": None}
    retrying(st.set_study_system_attr, study._study_id, prefix + artifact_id, json.dumps(meta))
    return artifact_id
