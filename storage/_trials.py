"""A trial's end: its state, values, user_attrs and telemetry rows in one transaction.

Optuna writes each user attribute in its own transaction and its tell reads the
whole trial twice around a third; a summary has eight attributes per metric. So
studyhall writes the ``trial_user_attributes`` rows (Optuna's stable table), its
own ``studyhall_trial_metrics`` rows and, when told, the trial's state and values
together: a finished trial always has its telemetry, and a tell with a thousand
scores costs one transaction, like a tell with a value.

Also a trial's other rows: back to the queue (``requeue_trial``), its study
(``study_of_trial``), its distributions read back (``read_trial_metrics``,
``read_study_samples``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import sqlalchemy as sa
from optuna.trial import TrialState

from studyhall.storage._optuna import table
from studyhall.storage._samples import F8, decode_samples, encode_samples
from studyhall.storage._schema import trial_metrics
from studyhall.storage._sql import driver_upsert
from studyhall.storage._storage import Storage

_STAT_COLUMNS = ("n", "mean", "std", "min", "p50", "p90", "p99", "max")

InTransaction: TypeAlias = Callable[[sa.Connection], None]
"""More work for ``finish_trial``'s transaction (``extra=``), e.g. :func:`storage._notes.note_writer`."""

TrialWrite: TypeAlias = Callable[[sa.Connection, int], None]
"""More work for the transaction that creates a trial, given its id (``Study._ask_with``: a lease)."""


def in_order(*writes: InTransaction | None) -> InTransaction:
    """One ``extra=`` that runs ``writes`` (None skipped) one after the other in the same transaction."""
    todo = [w for w in writes if w is not None]

    def write(conn: sa.Connection) -> None:
        for w in todo:
            w(conn)

    return write


def finish_trial(
    st: Storage,
    *,
    study_id: int,
    trial_id: int,
    trial_number: int,
    state: TrialState,
    values: Sequence[float] | None = None,
    user_attrs: Mapping[str, Any],
    metrics: Iterable[tuple[str, Mapping[str, Any], np.ndarray | None]] = (),
    extra: InTransaction | None = None,
    completed_at: datetime | None = None,
    started_at: datetime | None = None,
) -> bool:
    """End a RUNNING trial: ``state``, ``values``, ``user_attrs`` and metrics rows in one transaction.

    ``metrics`` holds one (name, summary, samples) per distribution; ``extra(conn)``
    runs in the same transaction (the optuna-dashboard note). ``started_at``, if given,
    replaces the ask time (a trial that waited in a queue). Returns False, having
    written nothing, when the trial was no longer RUNNING.
    """
    rows = []
    for name, summary, samples in metrics:
        samples_format, blob = (F8, None) if samples is None else encode_samples(samples)
        rows.append(
            {
                "study_id": study_id,
                "trial_id": trial_id,
                "trial_number": trial_number,
                "name": name,
                **{c: summary[c] for c in _STAT_COLUMNS},
                "histogram": json.dumps(summary["histogram"]),  # driver_upsert takes a JSON column's text
                "samples": blob,
                "samples_format": samples_format,
            }
        )

    def telemetry(conn: sa.Connection) -> None:
        driver_upsert(conn, trial_metrics, rows, keys=("trial_id", "name"))
        if extra is not None:
            extra(conn)

    return st.optuna.finish_trial(
        trial_id,
        state,
        values,
        user_attrs=dict(user_attrs),
        extra=telemetry,
        completed_at=completed_at,
        started_at=started_at,
    )


def requeue_trial(st: Storage, trial_id: int) -> bool:
    """Put a RUNNING trial that never ran back in the study's queue (WAITING); False if it is not RUNNING."""
    return st.optuna.requeue_trial(trial_id)


def study_of_trial(st: Storage, trial_id: int) -> int | None:
    """The id of the study trial ``trial_id`` belongs to; None if there is no such trial."""
    t = table("TrialModel")
    query = sa.select(t.c.study_id).where(t.c.trial_id == trial_id)
    return st.transaction(lambda conn: conn.execute(query).scalar_one_or_none(), read=True)


def read_trial_metrics(st: Storage, trial_id: int) -> dict[str, dict[str, Any]]:
    """Every stored summary of one trial, by metric name (histogram included, samples not)."""
    cols = [trial_metrics.c.name, trial_metrics.c.histogram, *(trial_metrics.c[c] for c in _STAT_COLUMNS)]

    def read(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        result = conn.execute(
            sa.select(*cols).where(trial_metrics.c.trial_id == trial_id).order_by(trial_metrics.c.name)
        )
        return {r.name: dict(r._mapping) for r in result}

    return st.transaction(read, read=True)


def read_study_samples(st: Storage, study_id: int, name: str) -> dict[int, np.ndarray]:
    """The raw samples of metric ``name`` for every trial of a study, by trial number."""

    def read(conn: sa.Connection) -> dict[int, np.ndarray]:
        result = conn.execute(
            sa.select(trial_metrics.c.trial_number, trial_metrics.c.samples_format, trial_metrics.c.samples).where(
                trial_metrics.c.study_id == study_id, trial_metrics.c.name == name
            )
        )
        return {
            r.trial_number: decode_samples(r.samples_format, r.samples) if r.samples is not None else np.empty(0)
            for r in result
        }

    return st.transaction(read, read=True)
