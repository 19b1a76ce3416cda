"""studyhall_trial_metrics.samples_format: how each row's samples are stored (0/1 samples as bits).

A pass/fail study's 1,000 scores took 8,000 bytes as float64; as bits they take 126
(storage/_samples.py). Older rows are float64 and get 0. The new revision also stops
an older studyhall from opening the database and misreading bits as floats: it says
"written by a newer studyhall" instead.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BITS = 1  # storage/_samples.py BITS, kept here as it was when this revision was written


def upgrade() -> None:
    op.add_column(
        "studyhall_trial_metrics",
        sa.Column("samples_format", sa.SmallInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    # Back to float64 before the column goes: without it every blob reads as float64.
    metrics = sa.table(
        "studyhall_trial_metrics",
        sa.column("id", sa.BigInteger),
        sa.column("samples", sa.LargeBinary),
        sa.column("samples_format", sa.SmallInteger),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(metrics.c.id, metrics.c.samples).where(metrics.c.samples_format == _BITS)).all()
    for row_id, blob in rows:
        n = 8 * (len(blob) - 2) + blob[-1]
        packed = np.frombuffer(blob, dtype=np.uint8, count=len(blob) - 1)
        f8 = np.unpackbits(packed, count=n, bitorder="little").astype("<f8").tobytes()
        conn.execute(sa.update(metrics).where(metrics.c.id == row_id).values(samples=f8, samples_format=0))
    with op.batch_alter_table("studyhall_trial_metrics") as batch:
        batch.drop_column("samples_format")
