"""Every use of Optuna's private storage internals, in one module.

studyhall reads and writes Optuna's own tables directly where Optuna's public
storage API would cost several transactions (a tell with its telemetry, a study
listing, the stale-trial scan). Those tables are stable (Optuna migrates them with
alembic and optuna-dashboard reads them), but the SQLAlchemy models that describe
them live in the private ``optuna.storages._rdb.models``: when an Optuna release
moves them, this is the one module to change.
"""

from __future__ import annotations

import functools
from typing import cast

import sqlalchemy as sa


@functools.cache
def table(model: str) -> sa.Table:
    """Optuna's table behind ``optuna.storages._rdb.models.<model>`` (e.g. ``"TrialModel"``)."""
    from optuna.storages._rdb import models

    # The declarative models leave __table__ untyped (Any in optuna 5, FromClause before).
    return cast(sa.Table, getattr(models, model).__table__)


def ensure_optuna_schema(engine: sa.Engine, url: str) -> None:
    """Create Optuna's tables if missing and refuse a schema this Optuna cannot use.

    Optuna's own ``RDBStorage`` set-up does exactly this; running its version manager
    on our engine keeps the schema, its version rows and alembic stamp identical.
    """
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _VersionManager
    from sqlalchemy import orm

    models.BaseModel.metadata.create_all(engine)
    sessions = orm.scoped_session(orm.sessionmaker(bind=engine))
    try:
        _VersionManager(url, engine, sessions).check_table_schema_compatibility()
    finally:
        sessions.remove()
