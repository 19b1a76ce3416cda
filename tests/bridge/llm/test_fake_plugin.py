"""The pytest plugin optimizer.testing: its fixtures in use, and --studyhall-pg in a pytest of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from studyhall.bridge import FakeProvider, LLMClient
from studyhall.storage import Storage, tables


def test_fake_provider_fixture_is_running(fake_provider):
    assert isinstance(fake_provider, FakeProvider)
    assert fake_provider.base_url.startswith("http://127.0.0.1:")
    lm = LLMClient("fake-model", base_url=fake_provider.base_url, api_key="x")
    assert lm.chat([{"role": "user", "content": "hi"}]).text == "fake answer to: hi"
    lm.close()
    assert fake_provider.stats()["completed"] == 1


@pytest.mark.studyhall_fake_provider(rpm=1, tpm=None, latency_s=0.0)
def test_marker_configures_the_fake_provider(fake_provider, fake_llm):
    assert fake_provider.rpm == 1
    assert fake_llm.chat([{"role": "user", "content": "one"}], max_tokens=4).text
    assert fake_provider.stats()["requests"] == 1


def test_studyhall_storage_is_a_fresh_sqlite_database(studyhall_storage, tmp_path):
    assert isinstance(studyhall_storage, Storage)
    assert studyhall_storage.dialect == "sqlite" and str(tmp_path) in studyhall_storage.url
    count = studyhall_storage.transaction(
        lambda c: c.execute(sa.select(sa.func.count()).select_from(tables.llm_cache)).scalar()
    )
    assert count == 0


def test_studyhall_pg_option_gives_a_postgresql_schema_that_is_dropped(postgresql_url, tmp_path):
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import pathlib

            def test_on_postgresql(studyhall_storage):
                assert studyhall_storage.dialect == "postgresql"
                schema = studyhall_storage.transaction(lambda c: c.exec_driver_sql("SELECT current_schema()").scalar())
                assert schema.startswith("studyhall_test_")
                assert studyhall_storage.now() > 0
                pathlib.Path("schema.txt").write_text(schema)
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_inner.py",
            "--studyhall-pg",
            postgresql_url,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    schema = (tmp_path / "schema.txt").read_text()
    engine = sa.create_engine(postgresql_url)
    try:
        with engine.connect() as c:
            left = c.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}).scalar()
    finally:
        engine.dispose()
    assert left == 0
