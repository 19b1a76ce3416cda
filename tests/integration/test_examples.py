"""Every example runs, at a small size, against a fresh database, and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studyhall.optimizer import Orchestrator
from tests._util import ROOT

EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 100) -> str:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "150", **(env or {})}
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _finished(url: str, name: str) -> list:  # type: ignore[type-arg]
    return Orchestrator(url).load_study(name).trials(states=["complete", "pruned", "fail"])


def test_miprov2_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ex.db'}"
    out = _run(
        [
            sys.executable,
            str(EXAMPLES / "miprov2_loop.py"),
            "--trials",
            "6",
            "--val",
            "20",
            "--minibatch",
            "10",
            "--workers",
            "2",
            "--storage",
            url,
            "--prune",
        ],
        tmp_path,
    )
    assert "best instruction:" in out and "full eval (first) after trial 7" in out
    assert len(_finished(url, "miprov2-example")) == 7  # 6 search trials and the default program's


def test_parallel_workers_share_one_study_and_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'par.db'}"
    env = {
        "STUDYHALL_STORAGE": url,
        "TRIALS_EACH": "2",
        "PYTHON": sys.executable,
        "STUDYHALL": str(BIN / "studyhall"),
        "EXAMPLE_MINIBATCH": "6",
        "WORKERS": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    out = _run(["bash", str(EXAMPLES / "parallel_workers.sh")], tmp_path, env, timeout=110)
    for w in (1, 2, 3):
        assert f"worker {w}: " in out
    trials = _finished(url, "parallel-prompts")
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert f"provider: {6 * 6} answered" in out  # every call of every process went to one provider


def test_resume_study_after_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'res.db'}"
    out = _run([sys.executable, str(EXAMPLES / "resume_study.py"), "--trials", "6", "--storage", url], tmp_path)
    assert "none RUNNING or WAITING: True" in out and "failed as stale (['stale'" in out
    trials = Orchestrator(url).load_study("resume-example").trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 7  # 6 search trials and the default program's
    assert {t.state.name for t in trials} == {"COMPLETE", "FAIL"}
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    assert retried == {t.number for t in trials if t.state.name == "FAIL"}  # each killed trial ran again


def test_ask_tell_manual(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'at.db'}"
    out = _run([sys.executable, str(EXAMPLES / "ask_tell_manual.py"), "--rounds", "2", "--storage", url], tmp_path)
    assert "4 trials; best #" in out and "its LLM latency: p50=" in out
    assert len(Orchestrator(url).load_study("ask-tell-example").trials()) == 4


def test_dashboard_guide_points_at_real_things() -> None:
    from typer.testing import CliRunner

    from studyhall.optimizer.cli import _register_commands, app

    text = (EXAMPLES / "dashboard.md").read_text()
    assert "../docs/dashboard.png" in text and (ROOT / "docs" / "dashboard.png").stat().st_size > 20_000
    _register_commands()
    for command in ("demo", "dashboard", "trials", "report"):
        assert f"studyhall {command}" in text
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
