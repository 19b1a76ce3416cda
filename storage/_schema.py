"""studyhall's own tables, beside Optuna's and never inside them.

Every table carries the ``studyhall_`` prefix so that optuna-dashboard and the
optuna CLI keep reading the same database untouched. The migrations in
``storage/_migrations`` create exactly these tables; change both together and add
a migration (never edit a released one).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids get 64 bits.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's plain BLOB stops at 64 KiB; 2**32-1 makes it LONGBLOB there.
Blob = sa.LargeBinary(length=2**32 - 1)

trial_metrics = sa.Table(
    "studyhall_trial_metrics",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.Integer, nullable=False),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("mean", sa.Double),
    sa.Column("std", sa.Double),
    sa.Column("min", sa.Double),
    sa.Column("p50", sa.Double),
    sa.Column("p90", sa.Double),
    sa.Column("p99", sa.Double),
    sa.Column("max", sa.Double),
    sa.Column("histogram", sa.JSON, nullable=False),
    # The raw samples, so that study-wide distributions pool exactly instead of merging
    # histograms and paired comparisons match them example by example. Stored as
    # samples_format says (storage/_samples.py): 0 little-endian float64, 1 0/1 samples
    # as bits (migration 0002; rows from before it are 0).
    sa.Column("samples", Blob),
    sa.Column("samples_format", sa.SmallInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("trial_id", "name", name="uq_studyhall_trial_metrics_trial_name"),
    sa.Index("ix_studyhall_trial_metrics_study_name", "study_id", "name"),
)

events = sa.Table(
    "studyhall_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("parent_id", sa.BigInteger),
    # Materialised path of zero-padded ids ("00000001.00000007"): a subtree is a
    # prefix query and ordering by path is a depth-first walk.
    sa.Column("path", sa.String(512), nullable=False),
    sa.Column("depth", sa.Integer, nullable=False, default=0),
    sa.Column("study_id", sa.Integer),
    sa.Column("trial_id", sa.Integer),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_studyhall_events_correlation_path", "correlation_id", "path"),
    sa.Index("ix_studyhall_events_type_created", "event_type", "created_at"),
    sa.Index("ix_studyhall_events_trial", "trial_id"),
    sa.Index("ix_studyhall_events_created", "created_at"),
)

rate_limits = sa.Table(
    "studyhall_rate_limits",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("bucket", sa.String(64), primary_key=True),
    sa.Column("capacity", sa.Double, nullable=False),
    sa.Column("period_s", sa.Double, nullable=False),
    # GCRA's theoretical arrival time, in the database clock's epoch seconds.
    sa.Column("tat", sa.Double, nullable=False),
    sa.Column("paused_until", sa.Double, nullable=False, default=0.0),
    sa.Column("updated_at", sa.Double, nullable=False),
)

llm_cache = sa.Table(
    "studyhall_llm_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

leases = sa.Table(
    "studyhall_leases",
    metadata,
    sa.Column("trial_id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, nullable=False),
    sa.Column("lease_s", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("ix_studyhall_leases_study_expires", "study_id", "expires_at"),
)
