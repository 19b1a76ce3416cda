"""Scratch databases for a benchmark run: a PostgreSQL schema, a MariaDB database (dropped after)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"


def scratch_schema_url() -> str | None:
    """A URL whose search_path is a new schema, or None (with the reason printed) without a server."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        eng = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {schema}")
        eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        print(f"(PostgreSQL skipped: {exc.__class__.__name__})")
        return None
    return f"{PG}?options=-csearch_path%3D{schema}"


def drop_scratch_schema(url: str) -> None:
    """Close studyhall's connections to ``url`` and drop its schema."""
    from studyhall.storage import connect

    schema = url.rsplit("%3D", 1)[1]
    connect(url).close()
    eng = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    eng.dispose()


def scratch_mysql_url() -> str | None:
    """A URL on a new MariaDB database, or None (with the reason printed) without a server."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        eng = sa.create_engine(MYSQL, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
        eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        print(f"(MariaDB skipped: {exc.__class__.__name__})")
        return None
    return MYSQL.rsplit("/", 1)[0] + f"/{name}"


def drop_scratch_mysql(url: str) -> None:
    """Close studyhall's connections to ``url`` and drop its database."""
    from studyhall.storage import connect

    connect(url).close()
    eng = sa.create_engine(MYSQL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {url.rsplit('/', 1)[1]}")
    eng.dispose()
