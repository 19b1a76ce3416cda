"""End to end in a real browser: the demo's telemetry as optuna-dashboard renders it.

`make e2e` runs this (it installs Debian's chromium when missing); `make test` does
not (marker ``e2e``). Set STUDYHALL_E2E_SCREENSHOT=docs/dashboard.png to keep the
screenshot it takes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from html import escape as html_escape
from pathlib import Path

import pytest

from studyhall.optimizer import Orchestrator
from tests._util import ROOT, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed; `make e2e` installs it (apt-get install chromium)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except OSError:
        return False


def _browse(args: list[str], profile: Path, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_telemetry_is_visible_in_optuna_dashboard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studyhall.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "studyhall",
            "demo",
            "--storage",
            url,
            "--trials",
            "6",
            "--workers",
            "2",
            "--val",
            "20",
            "--minibatch",
            "10",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert f"optuna-dashboard {url}" in demo.stdout

    study = Orchestrator(url).load_study("demo")
    best = study.best_trial
    assert "score.p90" in best.user_attrs and "score.ci_low" in best.user_attrs
    sel = study.selection
    assert sel is not None and sel.line() in demo.stdout  # the demo prints the study's recorded selection
    assert any((tmp_path / "studyhall-artifacts").iterdir())  # the report's figure, beside the database

    port = _free_port()
    dash = subprocess.Popen(
        [sys.executable, "-m", "studyhall", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: dash.poll() is not None or _up(f"{base}/api/studies"), timeout=30, what="optuna-dashboard to answer"
        )
        assert dash.poll() is None, dash.stderr.read().decode()[-2000:] if dash.stderr else ""
        page = f"{base}/dashboard/studies/{study._study_id}/trials?numbers={best.number}"

        dom = _browse(["--dump-dom", page], tmp_path / "profile-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert f"Trial {best.number}" in html
        # the telemetry written at tell time: score distribution attrs and the trial's markdown note
        assert "score.p90" in html and "llm.latency_s.p90" in html
        assert f"Trial {best.number}: distributions" in html
        assert "mipro.0_instruction" in html

        # the selection: a study note on the study's note page, and the selected trial's note says so
        note = _browse(["--dump-dom", f"{base}/dashboard/studies/{study._study_id}/note"], tmp_path / "profile-note")
        assert note.returncode == 0, note.stderr[-2000:]
        assert "Selected answer" in note.stdout and html_escape(sel.line()) in note.stdout
        chosen = _browse(
            ["--dump-dom", f"{base}/dashboard/studies/{study._study_id}/trials?numbers={sel.trial}"],
            tmp_path / "profile-chosen",
        )
        assert "This combination is the study" in chosen.stdout

        # the report's figure as a study artifact: an <img> on the study page whose source is a PNG
        top = _browse(["--dump-dom", f"{base}/dashboard/studies/{study._study_id}"], tmp_path / "profile-top")
        assert top.returncode == 0, top.stderr[-2000:]
        img = re.search(r'<img[^>]*alt="studyhall-report.png"[^>]*src="(/artifacts/[^"]+)"', top.stdout)
        assert img is not None, "the study page shows no studyhall-report.png artifact"
        with urllib.request.urlopen(base + img.group(1), timeout=10) as resp:  # noqa: S310 - loopback only
            assert resp.read(8) == b"\x89PNG\r\n\x1a\n"

        shot = tmp_path / "dashboard.png"
        png = _browse(["--window-size=1400,1100", f"--screenshot={shot}", page], tmp_path / "profile-shot")
        assert png.returncode == 0, png.stderr[-2000:]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
        keep = os.environ.get("STUDYHALL_E2E_SCREENSHOT")
        if keep:
            Path(keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, keep)
    finally:
        dash.terminate()
        try:
            dash.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dash.kill()
            dash.wait()
        if dash.stderr:
            dash.stderr.close()
