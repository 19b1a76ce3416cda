"""What `pip install studyhall` puts on a machine: one import name, nothing generic at the top level.

Built as a real wheel and imported from a directory that is not the checkout, so the
repository's own folders cannot stand in for what was installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools builds in the source tree's build/, which another
    # build (a second test process, a developer's pip) may be writing or deleting at once.
    src = tmp_path_factory.mktemp("source") / "studyhall"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", "*.egg-info", ".pytest_cache", "*.db*")
    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("studyhall-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    return target


def _python(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The installed copy comes first on the path; the dependencies come from this venv.
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_installs_one_top_level_name(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"studyhall"}
    # What runs outside Python files travels too: the migrations and the typing marker.
    assert any(n.startswith("studyhall/storage/_migrations/versions/") and n.endswith(".py") for n in names)
    assert "studyhall/py.typed" in names


def test_installed_studyhall_imports_and_generic_names_do_not(installed: Path, tmp_path: Path):
    done = _python(
        "import studyhall, studyhall.optimizer, studyhall.bridge, studyhall.storage\n"
        "from studyhall import Orchestrator, WorkerPool, RateLimiter, connect, StudyhallError\n"
        "print(studyhall.__file__)\n",
        installed,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(installed))
    for name in ("optimizer", "bridge", "storage"):
        gone = _python(f"import {name}", installed, tmp_path)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, (name, gone.stderr)


def test_a_users_own_storage_module_does_not_shadow_studyhall(installed: Path, tmp_path: Path):
    (tmp_path / "storage.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "optimizer.py").write_text("raise SystemExit('the user module was imported')\n")
    done = _python(
        "from studyhall import connect, Orchestrator\n"
        "orch = Orchestrator(connect('sqlite:///pkg.db'))\n"
        "study = orch.create_study('pkg')\n"
        "t = study.ask({'x': __import__('studyhall').Float(0, 1)})\n"
        "study.tell(t, 1.0)\n"
        "print(study.best_value)\n",
        installed,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"
