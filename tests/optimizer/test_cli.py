"""The `studyhall studies` and `studyhall trials` commands."""

from __future__ import annotations

import json
import subprocess
import sys

from studyhall.optimizer import Float, Orchestrator
from tests._util import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studyhall", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_studies_and_trials_as_json_and_tables(sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize")
    t = study.ask({"x": Float(0, 1)})
    study.tell(t, scores=[1, 0, 1, 1], metrics={"llm.latency_s": [0.5, 1.5]})
    study.tell(study.ask(), state="fail", error="provider down")

    out = run("studies", "--storage", sqlite_url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"name": study_name, "directions": ["maximize"], "n_trials": 2, "best_value": 0.75}
    ]

    out = run("trials", study_name, "--storage", sqlite_url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc["trials"]
    assert [r["state"] for r in rows] == ["complete", "fail"]
    summary = doc["summary"]
    assert summary["n_trials"] == 2 and summary["n_complete"] == 1
    assert summary["score"]["n"] == 4 and summary["llm.latency_s"]["p50"] == 1.0
    assert rows[0]["user_attrs"]["score.p90"] == 1.0 and rows[0]["values"] == [0.75]
    assert rows[1]["user_attrs"]["error"] == "provider down"

    table = run("trials", study_name, "--storage", sqlite_url)
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "state" in line)
    assert "p90" in header and "lat p50 s" in header
    assert "provider down" in table.stdout
    assert study_name in run("studies", "--storage", sqlite_url).stdout


def test_bad_input_exits_2_with_one_line_and_no_traceback(sqlite_url, study_name):
    Orchestrator(sqlite_url).create_study(study_name)
    for args in (
        ["trials", "no-such-study", "--storage", sqlite_url],
        ["studies", "--storage", "redis://127.0.0.1:6379"],
        ["trials", study_name, "--storage", sqlite_url, "--state", "exploded"],
    ):
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith("error:"), out.stderr
    missing = run("trials", "no-such-study", "--storage", sqlite_url)
    assert study_name in missing.stderr  # the message names the known studies


def test_help_describes_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("studies", "trials", "demo"):
        assert cmd in out.stdout
