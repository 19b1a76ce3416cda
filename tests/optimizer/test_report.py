"""``studyhall report``: the figure and the HTML page are rendered from the study."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from studyhall.optimizer import Float, Orchestrator
from studyhall.optimizer.cli import _register_commands, app
from studyhall.optimizer.telemetry._report import render_report
from studyhall.storage import InvalidRequest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def study(sqlite_url, study_name):  # type: ignore[no-untyped-def]
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    rng = np.random.default_rng(1)
    for i in range(8):
        t = study.ask({"x": Float(0, 1)})
        if i == 3:
            study.tell(t, state="fail", error="boom")
            continue
        study.tell(
            t,
            scores=(rng.random(30) < t.params["x"]).astype(float),
            metrics={"llm.latency_s": rng.lognormal(-1, 0.4, 30)},
        )
    return study


@pytest.mark.slow
def test_png_and_html_reports(study, tmp_path):
    png = render_report(study, tmp_path / "r.png")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    page = render_report(study, tmp_path / "sub" / "r.html", max_trials=4).read_text()
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m and base64.b64decode(m.group(1)).startswith(PNG_MAGIC)
    assert "Study summary" in page and "score (pooled)" in page and "llm.latency_s (pooled)" in page
    best = study.best_trial
    assert f"<tr><td>{best.number}</td>" in page  # the best trials table starts with the best
    with pytest.raises(InvalidRequest, match=".png or .html"):
        render_report(study, tmp_path / "r.pdf")


def test_continuous_scores_and_an_empty_study(sqlite_url, study_name, tmp_path):
    orch = Orchestrator(sqlite_url)
    cont = orch.create_study(study_name + "-c")
    for i in range(3):
        cont.tell(cont.ask({"x": Float(0, 1)}), scores=np.linspace(0, 1, 20) ** (i + 1))
    assert render_report(cont, tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    empty = orch.create_study(study_name + "-e")
    assert render_report(empty, tmp_path / "e.html").stat().st_size > 1000


def test_the_report_command(study, tmp_path):
    _register_commands()
    runner = CliRunner()
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", study.name, "--storage", study.storage.url, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "study": study.name,
        "out": str(out),
        "bytes": out.stat().st_size,
        "artifacts": [],
        "artifact_dir": None,
    }
    bad = runner.invoke(app, ["report", study.name, "--storage", study.storage.url, "--out", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and "error:" in bad.output
    missing = runner.invoke(app, ["report", "no-such-study", "--storage", study.storage.url])
    assert missing.exit_code == 2
