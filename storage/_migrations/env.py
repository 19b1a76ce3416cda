"""Alembic environment for studyhall's own tables (run programmatically by storage)."""

from __future__ import annotations

from alembic import context

from studyhall.storage._schema import metadata

VERSION_TABLE = "studyhall_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # Optuna's tables share the database; never let autogenerate touch them.
    include_name=lambda name, type_, parent: type_ != "table" or (name or "").startswith("studyhall_"),
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
