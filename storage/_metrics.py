"""Per-trial telemetry rows and user_attrs, written in one transaction.

Optuna writes each user attribute in its own transaction; a summary has eight of
them per metric, so studyhall writes the ``trial_user_attributes`` rows (Optuna's
stable table) and its own ``studyhall_trial_metrics`` rows together instead.
This happens before the trial is told, so a finished trial always has its
telemetry and Optuna's cache (which re-reads unfinished trials) sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import numpy as np
import sqlalchemy as sa

from storage._schema import trial_metrics
from storage._storage import Storage

_STAT_COLUMNS = ("n", "mean", "std", "min", "p50", "p90", "p99", "max")


def _user_attrs_table() -> sa.Table:
    from optuna.storages._rdb import models

    # Optuna's declarative models leave __table__ untyped (Any in optuna 5, FromClause before).
    return cast(sa.Table, models.TrialUserAttributeModel.__table__)


def write_trial_telemetry(
    st: Storage,
    *,
    study_id: int,
    trial_id: int,
    trial_number: int,
    user_attrs: Mapping[str, Any],
    metrics: Iterable[tuple[str, Mapping[str, Any], np.ndarray | None]] = (),
    extra: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Upsert ``user_attrs`` on the trial and one metrics row per (name, summary, samples).

    ``extra(conn)`` runs in the same transaction (the optuna-dashboard note).
    """
    ua = _user_attrs_table()
    rows = list(metrics)
    attrs = {k: json.dumps(v) for k, v in user_attrs.items()}

    def write(conn: sa.Connection) -> None:
        if attrs:
            conn.execute(sa.delete(ua).where(ua.c.trial_id == trial_id, ua.c.key.in_(list(attrs))))
            conn.execute(sa.insert(ua), [{"trial_id": trial_id, "key": k, "value_json": v} for k, v in attrs.items()])
        if rows:
            names = [name for name, _, _ in rows]
            conn.execute(sa.delete(trial_metrics).where(trial_metrics.c.trial_id == trial_id, trial_metrics.c.name.in_(names)))
            conn.execute(
                sa.insert(trial_metrics),
                [
                    {
                        "study_id": study_id,
                        "trial_id": trial_id,
                        "trial_number": trial_number,
                        "name": name,
                        **{c: summary[c] for c in _STAT_COLUMNS},
                        "histogram": [list(b) for b in summary["histogram"]],
                        "samples": None if samples is None else np.ascontiguousarray(samples, dtype="<f8").tobytes(),
                    }
                    for name, summary, samples in rows
                ],
            )
        if extra is not None:
            extra(conn)

    st.run(write)


def read_trial_metrics(st: Storage, trial_id: int) -> dict[str, dict[str, Any]]:
    """Every stored summary of one trial, by metric name (histogram included, samples not)."""
    cols = [trial_metrics.c.name, trial_metrics.c.histogram, *(trial_metrics.c[c] for c in _STAT_COLUMNS)]

    def read(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        result = conn.execute(sa.select(*cols).where(trial_metrics.c.trial_id == trial_id).order_by(trial_metrics.c.name))
        return {r.name: dict(r._mapping) for r in result}

    return st.run(read)


def read_study_samples(st: Storage, study_id: int, name: str) -> dict[int, np.ndarray]:
    """The raw samples of metric ``name`` for every trial of a study, by trial number."""

    def read(conn: sa.Connection) -> dict[int, np.ndarray]:
        result = conn.execute(
            sa.select(trial_metrics.c.trial_number, trial_metrics.c.samples).where(
                trial_metrics.c.study_id == study_id, trial_metrics.c.name == name
            )
        )
        return {
            r.trial_number: np.frombuffer(r.samples, dtype="<f8") if r.samples is not None else np.empty(0)
            for r in result
        }

    return st.run(read)


def delete_study_rows(st: Storage, study_id: int) -> None:
    """Remove studyhall's rows that belong to a study (called when the study is deleted)."""
    from storage._schema import events, leases

    def delete(conn: sa.Connection) -> None:
        for table in (trial_metrics, events, leases):
            conn.execute(sa.delete(table).where(table.c.study_id == study_id))

    st.run(delete)
