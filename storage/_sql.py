"""The few statements whose SQL differs between SQLite, PostgreSQL and MySQL (clock, upserts, JSON fields)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
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


def json_equals(dialect: str, column: Any, path: Sequence[str], value: Any) -> sa.ColumnElement[bool]:
    """``column[path...] == value`` on a JSON column, type-exact (``1`` is not ``"1"`` nor ``true``).

    ``value`` is a str, a number, a bool or None; ``path`` holds field names (no
    quotes or backslashes: callers check). Each database spells JSON access and
    JSON types its own way.
    """
    if isinstance(value, bool):
        kind = "bool"
    elif isinstance(value, (int, float)):
        kind = "number"
        value = float(value)
    elif isinstance(value, str):
        kind = "str"
    else:
        kind = "null"
    if dialect == "postgresql":
        node = column[tuple(path)] if len(path) > 1 else column[path[0]]  # -> / #> on the json column
        text = node.as_string()  # ->> / #>>
        jtype = sa.func.json_typeof(node)
        if kind == "str":
            return sa.and_(jtype == "string", text == value)
        if kind == "bool":
            return sa.and_(jtype == "boolean", text == ("true" if value else "false"))
        if kind == "null":
            return jtype == "null"
        # Cast only numbers: PostgreSQL would abort the query on a non-numeric text.
        num = sa.case((jtype == "number", sa.cast(text, sa.Double)), else_=None)
        return num == float(value)  # already a float: float() types the comparison for mypy
    json_path = "$" + "".join(f'."{p}"' for p in path)
    extracted = sa.func.json_extract(column, json_path)
    if dialect == "sqlite":
        jtype = sa.func.json_type(column, json_path)
        if kind == "str":
            return sa.and_(jtype == "text", extracted == value)
        if kind == "bool":
            return jtype == ("true" if value else "false")
        if kind == "null":
            return jtype == "null"
        return sa.and_(jtype.in_(["integer", "real"]), extracted == value)
    # MySQL / MariaDB
    jtype = sa.func.json_type(extracted)
    if kind == "str":
        # Binary comparison: the default collation would match "Answer" to "answer".
        unq = sa.cast(sa.func.json_unquote(extracted), sa.LargeBinary)
        return sa.and_(jtype == "STRING", unq == sa.cast(sa.literal(value), sa.LargeBinary))
    if kind == "bool":
        return sa.and_(jtype == "BOOLEAN", sa.func.json_unquote(extracted) == ("true" if value else "false"))
    if kind == "null":
        return jtype == "NULL"
    num = sa.case((jtype.in_(["INTEGER", "DOUBLE", "UNSIGNED INTEGER", "DECIMAL"]), extracted + 0.0), else_=None)
    return num == float(value)
