"""The `studyhall studies` and `studyhall trials` commands."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from importlib import metadata

import pytest

from studyhall.bridge import FakeProvider
from studyhall.optimizer import Float, Orchestrator
from studyhall.optimizer.cli import main
from studyhall.storage import connect
from tests._util import ROOT
from tests.conftest import MYSQL_ADMIN, PG_ADMIN

OBJ = "tests.optimizer.optimize_objectives"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studyhall", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.mark.slow
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
    assert "p90" in header and "lat p50 s" in header and "score mean [95% CI]" in header
    assert "0.75 [0.301, 0.954]" in table.stdout  # 3 of 4: the mean and its Wilson interval
    assert "provider down" in table.stdout
    assert study_name in run("studies", "--storage", sqlite_url).stdout


@pytest.mark.slow
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


# ---- issue 13: hostile names, broken databases, one-line errors --------------------------
# In-process (main() under capsys): a subprocess per case would cost a second or two of imports.


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``studyhall ARGS`` in this process: (exit code, stdout, stderr); stderr is not a terminal."""
    monkeypatch.delenv("COLUMNS", raising=False)  # rich's width when not a terminal: 80
    monkeypatch.delenv("STUDYHALL_STORAGE", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["studyhall", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        return exited.value.code, out.out, out.err

    return run


HOSTILE = "evil\x1b]0;pwned\x07[red]x[/]\x1b[2J\u202e:smile:\x9b1m"


def test_control_characters_and_markup_from_the_database_are_shown_escaped(cli, sqlite_url):
    # issue 13, item 9: a study name that retitles the terminal and clears the screen
    study = Orchestrator(sqlite_url).create_study(HOSTILE, direction="maximize")
    study.tell(study.ask({"p\x1b[31m": Float(0, 1)}), 0.5)
    study.tell(study.ask(), state="fail", error="bad\x1b[2J[/bold]\nnext line")
    outputs = [
        cli("studies", "--storage", sqlite_url),
        cli("trials", HOSTILE, "--storage", sqlite_url),
        cli("trials", "missing", "--storage", sqlite_url),  # the error names the known studies
    ]
    assert [code for code, _, _ in outputs] == [0, 0, 2]
    for _, out, err in outputs:
        text = out + err
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
        assert "Traceback" not in text
    studies, trials, missing = (out + err for _, out, err in outputs)
    assert r"evil\x1b]0;pwned\x07[red]x[/]\x1b[2J\u202e:smile:\x9b1m" in studies  # escaped, markup and emoji literal
    assert r"p\x1b[31m=" in trials and r"bad\x1b[2J[/bold]\nnext" in trials
    assert r"\x1b]0;pwned" in missing and len(missing.splitlines()) == 1
    code, out, _ = cli("trials", HOSTILE, "--storage", sqlite_url, "--json")
    assert code == 0 and "\x1b" not in out and json.loads(out)["trials"][1]["user_attrs"]["error"].startswith("bad\x1b")


def test_error_lines_are_never_wrapped(cli, tmp_path):
    # issue 13, item 15: 80 columns when stderr is not a terminal used to break them in 2-4 lines
    url = f"sqlite:///{tmp_path / ('a-long-folder-name-' * 5)}/studyhall.db"
    for args in (
        ["studies", "--storage", url],
        ["trials", "x" * 150, "--storage", url],
        ["serve", "--host", "0.0.0.0", "--port", "1"],
        ["trials", "x", "--limit", "0"],
    ):
        code, _, err = cli(*args)
        assert code == 2 and err.startswith("error: ") and len(err) > 100, err
        assert err.count("\n") == 1, err


def test_read_only_commands_do_not_create_a_database(cli, tmp_path):
    # issue 13, item 17: `studies` and `trials` used to create the file (and its folder)
    missing = tmp_path / "no-such-folder" / "studyhall.db"
    url = f"sqlite:///{missing}"
    for args in (["studies"], ["trials", "qa"], ["report", "qa", "--out", str(tmp_path / "r.html")]):
        code, _, err = cli(*args, "--storage", url)
        assert code == 2 and err.startswith(f"error: there is no database at {missing}"), err
    assert not missing.parent.exists()


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"studyhall {metadata.version('studyhall')}"


def test_a_worker_whose_trials_all_failed_exits_1(cli, sqlite_url, study_name):
    # issue 13, item 17: it used to exit 0, so scripts and schedulers saw success
    code, _, err = cli(
        "worker",
        study_name,
        "--create",
        "--objective",
        "tests.optimizer.cli_objectives:always_fails",
        "--trials",
        "2",
        "--workers",
        "0",
        "--storage",
        sqlite_url,
    )
    assert code == 1, err
    assert err.startswith("error: none of the 2 trials this worker ran completed") and err.count("\n") == 1
    code, out, err = cli(
        "worker",
        study_name,
        "--objective",
        f"{OBJ}:quadratic",
        "--trials",
        "1",
        "--workers",
        "0",
        "--storage",
        sqlite_url,
    )
    assert code == 0 and "1 completed" in out, err


def _sqlite_files(tmp_path):
    """SQLite files that cannot be used, by kind (each a fresh copy)."""
    good = tmp_path / "good.db"
    Orchestrator(f"sqlite:///{good}").create_study("qa")
    connect(f"sqlite:///{good}").close()
    data = good.read_bytes()
    files = {
        "not a database": b"hello, this is a text file and not a database\n" * 100,
        "truncated": data[: len(data) // 3],
        "corrupted": data[:100] + b"\x00" * 100 + data[200:4096] + b"\xff" * 4096 + data[8192:],
    }
    out = {}
    for kind, content in files.items():
        path = tmp_path / f"{kind.replace(' ', '-')}.db"
        path.write_bytes(content)
        out[kind] = f"sqlite:///{path}"
    for kind, sql in (
        ("newer studyhall", "UPDATE studyhall_alembic_version SET version_num = '9999'"),
        (
            "newer optuna",
            "UPDATE version_info SET schema_version = 999, library_version = '99.0.0'; "
            "UPDATE alembic_version SET version_num = 'v99.0.0'",
        ),
    ):
        path = tmp_path / f"{kind.replace(' ', '-')}.db"
        path.write_bytes(data)
        with sqlite3.connect(path) as con:
            con.executescript(sql)
        out[kind] = f"sqlite:///{path}"
    (tmp_path / "a-folder.db").mkdir()
    out["a directory"] = f"sqlite:///{tmp_path / 'a-folder.db'}"
    out["under a file"] = f"sqlite:///{tmp_path / 'good.db' / 'x.db'}"
    return out


SQLITE_CASES = {  # the one line connect() raises (storage/_storage.py _open_error)
    "not a database": "not a SQLite database, or it is damaged",
    "truncated": "not a SQLite database, or it is damaged",
    "corrupted": "not a SQLite database, or it is damaged",
    "newer studyhall": "was written by a newer studyhall",
    "newer optuna": "no longer compatible",
    "a directory": "a directory you can write",
    "under a file": "a directory you can write",  # (for `studies`: there is no database there)
}


def test_unusable_sqlite_files_are_one_line_errors(cli, tmp_path):
    # issue 13, item 14: each of these was a traceback
    urls = _sqlite_files(tmp_path)
    for kind, needle in SQLITE_CASES.items():
        for command in (["studies"], ["serve", "--port", "0"]):  # read-only, and one that may create the file
            if kind == "under a file" and command == ["studies"]:
                continue
            code, out, err = cli(*command, "--storage", urls[kind])
            assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (kind, command, err)
            assert needle in err, (kind, err)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_server_databases_that_do_not_exist_or_refuse_the_user_are_one_line_errors(cli, request, backend):
    # issue 13, item 14
    request.getfixturevalue(f"{backend}_url")  # the server is up (or the case skips/fails as the suite's others)
    admin = PG_ADMIN if backend == "postgresql" else MYSQL_ADMIN
    scheme, _, rest = admin.partition("://")
    host_db = rest.split("@", 1)[1]
    no_db = f"{scheme}://{rest.rsplit('/', 1)[0]}/studyhall_no_such_db"
    no_user = f"{scheme}://nobody_here:pw@{host_db}"
    for url, needle in ((no_db, "studyhall_no_such_db"), (no_user, "nobody_here")):
        code, _, err = cli("studies", "--storage", url)
        assert code == 2 and err.startswith("error: Storage(") and err.count("\n") == 1, err
        assert needle in err and ":pw@" not in err and ("fix the URL" in err or "user and password" in err)


def test_report_into_a_missing_folder_and_a_wrong_log_level_are_one_line_errors(cli, sqlite_url, tmp_path):
    Orchestrator(sqlite_url).create_study("qa")
    for args, needle in (
        (["report", "qa", "--storage", sqlite_url, "--out", str(tmp_path / "nowhere" / "r.html")], "does not exist"),
        (["serve", "--log-level", "loud", "--storage", sqlite_url], "'loud' is not one of"),
    ):
        code, _, err = cli(*args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_demo_takes_the_api_key_from_the_environment_never_the_command_line(cli, sqlite_url, monkeypatch):
    # issue 13, item 12: `--api-key KEY` showed the key to every user in `ps`
    code, _, err = cli("demo", "--api-key", "sk-on-the-command-line", "--storage", sqlite_url)
    assert code == 2 and "--api-key is refused" in err and "--api-key-env" in err and err.count("\n") == 1
    assert "sk-on-the-command-line" not in err
    monkeypatch.setenv("MY_PROVIDER_KEY", "sk-from-the-environment")
    with FakeProvider(api_key="sk-from-the-environment") as fp:
        code, out, err = cli(
            "demo",
            "--base-url",
            fp.base_url,
            "--api-key-env",
            "MY_PROVIDER_KEY",
            "--model",
            "fake-model",
            "--trials",
            "1",
            "--workers",
            "0",
            "--val",
            "10",
            "--minibatch",
            "2",
            "--storage",
            sqlite_url,
        )
        stats = fp.stats()
    assert code == 0, err
    assert stats["completed"] > 0 and stats["bad_requests"] == 0  # every request carried the key
    assert "sk-from-the-environment" not in out + err
