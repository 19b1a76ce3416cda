"""The few statements whose SQL differs between SQLite, PostgreSQL and MySQL."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa


def db_clock_sql(dialect: str) -> str:
    """A SELECT of the database server's clock in epoch seconds (one clock for every host)."""
    if dialect == "sqlite":
        return "SELECT (julianday('now') - 2440587.5) * 86400.0"
    if dialect == "postgresql":
        return "SELECT EXTRACT(EPOCH FROM clock_timestamp())"
    return "SELECT UNIX_TIMESTAMP(NOW(6))"


def insert_ignore(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, silently skipping those whose primary key already exists (any dialect)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(table.insert().prefix_with("IGNORE"), rows)


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """INSERT rows, overwriting the other columns of a row whose unique ``keys`` already exist.

    One statement instead of a DELETE and an INSERT; ``keys`` must be a unique
    constraint of ``table``.
    """
    if rows:
        conn.execute(_upsert_statement(conn.dialect.name, table, tuple(rows[0]), keys), rows)


@functools.lru_cache(maxsize=64)
def _upsert_statement(dialect: str, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    # Built once per shape: constructing ON CONFLICT clauses costs more than running them.
    update = [c for c in columns if c not in keys]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pstmt = pg_insert(table)
        return pstmt.on_conflict_do_update(index_elements=keys, set_={c: pstmt.excluded[c] for c in update})
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        sstmt = sqlite_insert(table)
        return sstmt.on_conflict_do_update(index_elements=keys, set_={c: sstmt.excluded[c] for c in update})
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    mstmt = mysql_insert(table)
    return mstmt.on_duplicate_key_update({c: mstmt.inserted[c] for c in update})
