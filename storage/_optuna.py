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
from typing import Any, cast

import sqlalchemy as sa


@functools.cache
def table(model: str) -> sa.Table:
    """Optuna's table behind ``optuna.storages._rdb.models.<model>`` (e.g. ``"TrialModel"``)."""
    from optuna.storages._rdb import models

    # The declarative models leave __table__ untyped (Any in optuna 5, FromClause before).
    return cast(sa.Table, getattr(models, model).__table__)


def stored_value(value: float) -> tuple[float | None, Any]:
    """How Optuna stores an objective value: (finite value or None, its kind: finite/inf/-inf)."""
    from optuna.storages._rdb.models import TrialValueModel

    return cast(tuple[float | None, Any], TrialValueModel.value_to_stored_repr(float(value)))

