"""The few statements whose SQL differs between SQLite, PostgreSQL and MySQL (clock, upserts, JSON fields)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler


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


class Ran(NamedTuple):
    """What a :class:`DriverStatement` run reports: the driver's row count."""

    rowcount: int


class DriverStatement:
    """A Core statement compiled once for one dialect, run on the driver's own cursor.

    ``Connection.execute`` of a prebuilt statement still costs 50-80 µs on a tell's
    path (its cache key, a context, bind processing per row), ``exec_driver_sql``
    10-20 µs; the driver's cursor itself a few (see :func:`run_driver_sql`). The
    price: values go to the driver as they are, so every bound value must already
    be what the driver takes: int, float, str, bytes or None, a JSON column's value
    as its JSON text.
    """

    __slots__ = ("names", "sql")

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
        if compiled.positional:  # qmark / format: tuples in this order (a name may repeat)
            self.names: tuple[str, ...] | None = tuple(compiled.positiontup or ())
        else:  # named / pyformat: the parameter dicts as they are
            if compiled.escaped_bind_names:
                raise ValueError(f"bind names that need escaping: {compiled.escaped_bind_names}")
            self.names = None
        self.sql = compiled.string

    def execute(self, conn: sa.Connection, runs: Sequence[Mapping[str, Any]]) -> Ran:
        """Run the statement once per dict of bound values (one driver call: ``executemany`` for several)."""
        names = self.names
        params: list[Any] = list(runs) if names is None else [tuple(r[k] for k in names) for r in runs]
        return run_driver_sql(conn, self.sql, params if len(params) != 1 else params[0])


# SQLAlchemy's own error handling, which the driver's cursor below must not lose: translating
# the driver's exception, noticing a dropped connection and invalidating it (storage/_retry.py
# retries on exactly that), the handle_error events. A private method: without it (another
# SQLAlchemy), every statement takes exec_driver_sql, slower but the same (tests/storage/test_sql.py).
_HANDLE_ERROR = getattr(sa.Connection, "_handle_dbapi_exception", None)


def run_driver_sql(conn: sa.Connection, sql: str, params: Any) -> Ran:
    """``conn.exec_driver_sql(sql, params)`` on the driver's cursor, with SQLAlchemy's error handling.

    ``exec_driver_sql`` builds an execution context and a result per statement, 10-15 µs
    of a tell's; the cursor costs a few. It falls back to ``exec_driver_sql`` wherever
    the two could differ: outside a transaction (SQLAlchemy would begin one), with
    statement logging or ``*_cursor_execute`` listeners (tracing), or without
    SQLAlchemy's error handler. ``params``: one tuple or dict, or a list of them (executemany).
    """
    if (
        _HANDLE_ERROR is None
        or not conn.in_transaction()
        or conn._echo  # echo=True logs every statement; only exec_driver_sql does
        or conn.dispatch.before_cursor_execute
        or conn.dispatch.after_cursor_execute
    ):
        return Ran(conn.exec_driver_sql(sql, params).rowcount)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if isinstance(params, list):
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        ran = Ran(cursor.rowcount)
    except BaseException as exc:  # as SQLAlchemy does: an interrupt mid-statement makes the connection suspect
        _HANDLE_ERROR(conn, exc, sql, params, cursor, None)  # raises the translated error
        raise  # not reached
    cursor.close()
    return ran


# Column types whose bind processing the caller does (see DriverStatement): JSON its text;
# LargeBinary bytes, which every driver takes; Float a float (SQLite's float() of it is a
# no-op then). Other columns must have no bind processor (an Enum has one: refused).
_DONE_BY_CALLER = (sa.LargeBinary, sa.JSON, sa.Float)


def driver_upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """:func:`upsert` as a :class:`DriverStatement` of one multi-row VALUES: for hot paths with driver-ready rows.

    Every row has the same keys, no two the same ``keys`` values; a JSON column takes its
    JSON text, a binary one bytes. One statement for many rows costs about half of an
    ``executemany`` (SQLite steps once instead of once per row).
    """
    if not rows:
        return
    columns = tuple(rows[0])
    per = max(1, _MAX_BINDS // len(columns))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        stmt, names = _driver_upsert(conn.dialect, table, columns, keys, len(chunk))
        if stmt.names is not None:  # positional: the values row after row (the order _driver_upsert checked)
            params: Any = tuple([row[c] for row in chunk for c in columns])
        else:
            params = {name: row[c] for row, row_names in zip(chunk, names) for c, name in zip(columns, row_names)}
        run_driver_sql(conn, stmt.sql, params)


_MAX_BINDS = 999  # SQLite's smallest compiled-in limit of bound values per statement


@functools.lru_cache(maxsize=256)
def _driver_upsert(
    dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...], n_rows: int
) -> tuple[DriverStatement, list[tuple[str, ...]]]:
    for c in columns:
        kind = table.c[c].type
        if not isinstance(kind, _DONE_BY_CALLER) and kind.dialect_impl(dialect).bind_processor(dialect) is not None:
            raise TypeError(f"{table.name}.{c} ({kind}) needs bind processing on {dialect.name}; use upsert()")
    names = [tuple(f"r{i}_{c}" for c in columns) for i in range(n_rows)]
    values = [{c: sa.bindparam(name, type_=table.c[c].type) for c, name in zip(columns, row)} for row in names]
    # inline(): no RETURNING of the new row's id, which PostgreSQL's compile adds for one row
    stmt = DriverStatement(_upsert_statement(dialect.name, table, columns, keys).values(values).inline(), dialect)
    if stmt.names is not None and stmt.names != tuple(n for row in names for n in row):
        raise ValueError(f"unexpected order of bound values in {stmt.sql}")  # driver_upsert relies on it
    return stmt, names


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
