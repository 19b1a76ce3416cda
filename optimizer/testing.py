"""studyhall's pytest plugin: fixtures for code that runs studies and calls LLMs.

Installed with studyhall (entry point ``pytest11: studyhall``), so these fixtures
are available in any project that has studyhall installed::

    def test_my_objective(fake_provider, studyhall_storage):
        lm = LLMClient("fake-model", base_url=fake_provider.base_url, api_key="test")
        study = Orchestrator(studyhall_storage).create_study("t")
        ...

    @pytest.mark.studyhall_fake_provider(rpm=60, tpm=10_000, error_rate=0.1)
    def test_under_pressure(fake_provider): ...

* ``fake_provider``: a running :class:`bridge.FakeProvider` (keyword arguments
  from the ``studyhall_fake_provider`` marker), stopped after the test.
* ``fake_llm``: an :class:`bridge.LLMClient` talking to ``fake_provider``.
* ``studyhall_storage``: a fresh :class:`storage.Storage` on a temporary SQLite
  file, or on a schema of its own in PostgreSQL when pytest runs with
  ``--studyhall-pg postgresql+psycopg://user@host/db`` (the schema is dropped after).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from studyhall.bridge import FakeProvider, LLMClient
    from studyhall.storage import Storage

MARKER = "studyhall_fake_provider"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--studyhall-pg URL``."""
    group = parser.getgroup("studyhall")
    group.addoption(
        "--studyhall-pg",
        metavar="URL",
        default=None,
        help="run the studyhall_storage fixture on this PostgreSQL database (a fresh schema per test) "
        "instead of a temporary SQLite file",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``studyhall_fake_provider`` marker."""
    config.addinivalue_line(
        "markers", f"{MARKER}(**kwargs): keyword arguments for the fake_provider fixture's FakeProvider"
    )


@pytest.fixture
def fake_provider(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    """A running FakeProvider on 127.0.0.1 (configure it with the studyhall_fake_provider marker)."""
    from studyhall.bridge import FakeProvider

    marker = request.node.get_closest_marker(MARKER)
    kwargs = dict(marker.kwargs) if marker is not None else {}
    with FakeProvider(**kwargs) as fp:
        yield fp


@pytest.fixture
def fake_llm(fake_provider: FakeProvider) -> Iterator[LLMClient]:
    """An LLMClient (no limiter, short timeout) talking to the fake_provider fixture."""
    from studyhall.bridge import LLMClient

    lm = LLMClient(fake_provider.model, base_url=fake_provider.base_url, api_key="studyhall-test-key", timeout=30.0)
    try:
        yield lm
    finally:
        lm.close()


@pytest.fixture
def studyhall_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh studyhall Storage: a temporary SQLite file, or a PostgreSQL schema with --studyhall-pg."""
    from studyhall.storage import connect

    pg_url = request.config.getoption("--studyhall-pg")
    if not pg_url:
        st = connect(f"sqlite:///{tmp_path / 'studyhall.db'}")
        try:
            yield st
        finally:
            st.close()
        return

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    schema = f"studyhall_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        st = connect(url.render_as_string(hide_password=False))
        try:
            yield st
        finally:
            st.close()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()
