"""studyhall's first tables: trial metrics, events, rate-limit buckets, LLM cache, leases.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Blob = sa.LargeBinary(length=2**32 - 1)


def upgrade() -> None:
    op.create_table(
        "studyhall_trial_metrics",
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
        sa.Column("samples", Blob),
        sa.UniqueConstraint("trial_id", "name", name="uq_studyhall_trial_metrics_trial_name"),
    )
    op.create_index("ix_studyhall_trial_metrics_study_name", "studyhall_trial_metrics", ["study_id", "name"])
    op.create_table(
        "studyhall_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("parent_id", sa.BigInteger),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("study_id", sa.Integer),
        sa.Column("trial_id", sa.Integer),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_studyhall_events_correlation_path", "studyhall_events", ["correlation_id", "path"])
    op.create_index("ix_studyhall_events_type_created", "studyhall_events", ["event_type", "created_at"])
    op.create_index("ix_studyhall_events_trial", "studyhall_events", ["trial_id"])
    op.create_index("ix_studyhall_events_created", "studyhall_events", ["created_at"])
    op.create_table(
        "studyhall_rate_limits",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("bucket", sa.String(64), primary_key=True),
        sa.Column("capacity", sa.Double, nullable=False),
        sa.Column("period_s", sa.Double, nullable=False),
        sa.Column("tat", sa.Double, nullable=False),
        sa.Column("paused_until", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "studyhall_llm_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "studyhall_leases",
        sa.Column("trial_id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, nullable=False),
        sa.Column("lease_s", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_studyhall_leases_study_expires", "studyhall_leases", ["study_id", "expires_at"])


def downgrade() -> None:
    for table in (
        "studyhall_leases",
        "studyhall_llm_cache",
        "studyhall_rate_limits",
        "studyhall_events",
        "studyhall_trial_metrics",
    ):
        op.drop_table(table)
