"""Every use of Optuna's private storage internals, in one module.

studyhall reads and writes Optuna's own tables directly where Optuna's public
storage API would cost several transactions (a tell with its telemetry, a study
listing, the stale-trial scan). Those tables are stable (Optuna migrates them with
alembic and optuna-dashboard reads them). They are described here in SQLAlchemy
Core rather than taken from the private ``optuna.storages._rdb.models``: importing
those ORM models (and with them ``sqlalchemy.orm``) cost a cold process about 100 ms
before its first trial. ``tests/storage/test_optuna_tables.py`` holds these tables
equal, column by column, to the installed Optuna's models: when an Optuna release
changes its schema, that test and this module are what to change.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa
from optuna.study import StudyDirection
from optuna.trial import TrialState

_metadata = sa.MetaData()
_Key = sa.String(512)  # models.MAX_INDEXED_STRING_LENGTH
_Float = sa.Float(precision=53)  # models.FLOAT_PRECISION


class TrialValueType(enum.Enum):
    """``models.TrialValueModel.TrialValueType``: the same names, so the same stored enum."""

    FINITE = 1
    INF_POS = 2
    INF_NEG = 3


class TrialIntermediateValueType(enum.Enum):
    """``models.TrialIntermediateValueModel.TrialIntermediateValueType``."""

    FINITE = 1
    INF_POS = 2
    INF_NEG = 3
    NAN = 4


def _attributes(name: str, owner: str, nullable_owner: bool = True) -> sa.Table:
    target = "studies.study_id" if owner == "study_id" else "trials.trial_id"
    return sa.Table(
        name,
        _metadata,
        sa.Column(f"{name[:-1]}_id", sa.Integer, primary_key=True),
        sa.Column(owner, sa.Integer, sa.ForeignKey(target), nullable=nullable_owner),
        sa.Column("key", _Key),
        sa.Column("value_json", sa.Text),
        sa.UniqueConstraint(owner, "key"),
    )


_TABLES: dict[str, sa.Table] = {
    "StudyModel": sa.Table(
        "studies",
        _metadata,
        sa.Column("study_id", sa.Integer, primary_key=True),
        sa.Column("study_name", _Key, index=True, unique=True, nullable=False),
    ),
    "StudyDirectionModel": sa.Table(
        "study_directions",
        _metadata,
        sa.Column("study_direction_id", sa.Integer, primary_key=True),
        sa.Column("direction", sa.Enum(StudyDirection), nullable=False),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.study_id"), nullable=False),
        sa.Column("objective", sa.Integer, nullable=False),
        sa.UniqueConstraint("study_id", "objective"),
    ),
    "StudyUserAttributeModel": _attributes("study_user_attributes", "study_id"),
    "StudySystemAttributeModel": _attributes("study_system_attributes", "study_id"),
    "TrialModel": sa.Table(
        "trials",
        _metadata,
        sa.Column("trial_id", sa.Integer, primary_key=True),
        sa.Column("number", sa.Integer),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.study_id"), index=True),
        sa.Column("state", sa.Enum(TrialState), nullable=False),
        sa.Column("datetime_start", sa.DateTime),
        sa.Column("datetime_complete", sa.DateTime),
    ),
    "TrialUserAttributeModel": _attributes("trial_user_attributes", "trial_id"),
    "TrialSystemAttributeModel": _attributes("trial_system_attributes", "trial_id"),
    "TrialParamModel": sa.Table(
        "trial_params",
        _metadata,
        sa.Column("param_id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.trial_id")),
        sa.Column("param_name", _Key),
        sa.Column("param_value", _Float),
        sa.Column("distribution_json", sa.Text),
        sa.UniqueConstraint("trial_id", "param_name"),
    ),
    "TrialValueModel": sa.Table(
        "trial_values",
        _metadata,
        sa.Column("trial_value_id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.trial_id"), nullable=False),
        sa.Column("objective", sa.Integer, nullable=False),
        sa.Column("value", _Float, nullable=True),
        sa.Column("value_type", sa.Enum(TrialValueType), nullable=False),
        sa.UniqueConstraint("trial_id", "objective"),
    ),
    "TrialIntermediateValueModel": sa.Table(
        "trial_intermediate_values",
        _metadata,
        sa.Column("trial_intermediate_value_id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.trial_id"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("intermediate_value", _Float, nullable=True),
        sa.Column("intermediate_value_type", sa.Enum(TrialIntermediateValueType), nullable=False),
        sa.UniqueConstraint("trial_id", "step"),
    ),
    "TrialHeartbeatModel": sa.Table(
        "trial_heartbeats",
        _metadata,
        sa.Column("trial_heartbeat_id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.trial_id"), nullable=False),
        sa.Column("heartbeat", sa.DateTime, nullable=False, default=sa.func.current_timestamp()),
        sa.UniqueConstraint("trial_id"),
    ),
}


def table(model: str) -> sa.Table:
    """Optuna's table behind ``optuna.storages._rdb.models.<model>`` (e.g. ``"TrialModel"``)."""
    return _TABLES[model]


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
