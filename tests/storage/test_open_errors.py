"""A storage that cannot be opened says why in one line (StorageError), never a driver's traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from studyhall.storage import StorageError, connect
from tests.conftest import MYSQL_ADMIN, PG_ADMIN


def refuse(url: str, *fragments: str) -> str:
    with pytest.raises(StorageError) as info:
        connect(url)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    return message


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"meeting notes, not a database\n" * 200)
    refuse(f"sqlite:///{junk}", "not a SQLite database", "move the file away")


def test_a_truncated_database(tmp_path: Path) -> None:
    path = tmp_path / "cut.db"
    connect(f"sqlite:///{path}").close()
    path.write_bytes(path.read_bytes()[:1000])
    refuse(f"sqlite:///{path}", "damaged")


def test_a_directory_where_the_file_should_be(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    refuse(f"sqlite:///{tmp_path / 'dir.db'}", "cannot open", "directory you can write")


def test_a_database_from_a_newer_studyhall(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    st = connect(f"sqlite:///{path}")
    with st.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE studyhall_alembic_version SET version_num = '9999_from_the_future'")
    st.close()
    refuse(f"sqlite:///{path}", "newer studyhall", "pip install -U studyhall")


def test_a_database_from_a_newer_optuna(tmp_path: Path) -> None:
    path = tmp_path / "newer-optuna.db"
    st = connect(f"sqlite:///{path}")
    with st.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
    st.close()
    refuse(f"sqlite:///{path}", "optuna")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_server_database_that_does_not_exist(backend: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{backend}_url")  # the server is up
    admin = PG_ADMIN if backend == "postgresql" else MYSQL_ADMIN
    refuse(admin.rsplit("/", 1)[0] + "/no_such_database_here", "does not exist", "CREATE DATABASE")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_server_that_refuses_the_user(backend: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{backend}_url")
    url = (
        "postgresql+psycopg://no_such_user@127.0.0.1:5432/test"
        if backend == "postgresql"
        else "mysql+pymysql://no_such_user:wrong@127.0.0.1:3306/test"
    )
    message = refuse(url, "refused the connection", "user and password")
    assert "wrong" not in message  # the password stays out of the message
