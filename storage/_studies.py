"""Whole-study reads and deletes that Optuna's storage API would do with a query per trial or per study.

Each read is a few aggregate queries on Optuna's tables, safe to run from any
thread beside an ``optimize`` loop (Optuna's own ``get_all_trials`` would read and
copy every trial).
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from optuna.trial import TrialState

from studyhall.storage._optuna import table
from studyhall.storage._schema import events, leases, trial_metrics
from studyhall.storage._storage import Storage


class StudyRow(NamedTuple):
    """One study as ``study_rows`` reads it."""

    name: str
    directions: list[str]
    n_trials: int
    best_value: float | None


def study_names(st: Storage) -> list[str]:
    """Every study name in the storage, sorted."""
    s = table("StudyModel")
    return st.transaction(lambda c: sorted(r[0] for r in c.execute(sa.select(s.c.study_name))), read=True)


def study_rows(st: Storage) -> list[StudyRow]:
    """Every study with its directions, number of trials and best value, in four queries in all."""
    s, d, t, v = table("StudyModel"), table("StudyDirectionModel"), table("TrialModel"), table("TrialValueModel")

    def read(conn: sa.Connection) -> list[StudyRow]:
        names: dict[int, str] = dict(conn.execute(sa.select(s.c.study_id, s.c.study_name)).all())
        dirs: dict[int, list[str]] = {}
        for sid, _objective, direction in conn.execute(
            sa.select(d.c.study_id, d.c.objective, d.c.direction).order_by(d.c.study_id, d.c.objective)
        ):
            dirs.setdefault(sid, []).append(direction.name.lower())
        counts: dict[int, int] = dict(
            conn.execute(sa.select(t.c.study_id, sa.func.count()).group_by(t.c.study_id)).all()
        )
        best_q = (
            sa.select(t.c.study_id, sa.func.min(v.c.value), sa.func.max(v.c.value))
            .select_from(t.join(v, v.c.trial_id == t.c.trial_id))
            .where(t.c.state == "COMPLETE", v.c.objective == 0)
            .group_by(t.c.study_id)
        )
        best = {sid: (lo, hi) for sid, lo, hi in conn.execute(best_q)}
        out = []
        for sid, name in sorted(names.items(), key=lambda kv: kv[1]):
            dd = dirs.get(sid, ["minimize"])
            bv = None
            if len(dd) == 1 and sid in best:
                bv = best[sid][1] if dd[0] == "maximize" else best[sid][0]
            out.append(StudyRow(name, dd, int(counts.get(sid, 0)), None if bv is None else float(bv)))
        return out

    return st.transaction(read, read=True)


def running_and_waiting(st: Storage, study_id: int) -> tuple[list[int], int]:
    """The ids of the study's RUNNING trials that will end by themselves, and how many wait in its queue.

    Left out: trials detached without a lease (their process exited and left them to
    be told from anywhere, some day): they neither end nor go stale on their own.
    """
    from studyhall.storage.rdb._storage import DETACHED_ATTR

    t, attrs = table("TrialModel"), table("TrialSystemAttributeModel")
    detached_for_good = sa.exists().where(
        attrs.c.trial_id == t.c.trial_id, attrs.c.key == DETACHED_ATTR, attrs.c.value_json == "true"
    )
    query = sa.select(t.c.trial_id, t.c.state).where(
        t.c.study_id == study_id,
        sa.or_(t.c.state == TrialState.WAITING, sa.and_(t.c.state == TrialState.RUNNING, ~detached_for_good)),
    )

    def read(conn: sa.Connection) -> tuple[list[int], int]:
        rows = conn.execute(query).all()
        return [i for i, state in rows if state == TrialState.RUNNING], sum(
            state == TrialState.WAITING for _, state in rows
        )

    return st.transaction(read, read=True)


def state_counts(st: Storage, study_id: int) -> tuple[dict[str, int], float | None]:
    """Trials of the study per state name (``"COMPLETE"``, ...) and the highest value of a COMPLETE one."""
    t, v = table("TrialModel"), table("TrialValueModel")
    counts_q = sa.select(t.c.state, sa.func.count()).where(t.c.study_id == study_id).group_by(t.c.state)
    best_q = (
        sa.select(sa.func.max(v.c.value))
        .select_from(t.join(v, v.c.trial_id == t.c.trial_id))
        .where(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
    )

    def read(conn: sa.Connection) -> tuple[dict[str, int], float | None]:
        counts = {(s.name if hasattr(s, "name") else str(s)): int(c) for s, c in conn.execute(counts_q)}
        best = conn.execute(best_q).scalar()
        return counts, None if best is None else float(best)

    return st.transaction(read, read=True)


def complete_values(st: Storage, study_id: int, n_objectives: int) -> tuple[int, int, list[list[float]]]:
    """The study's number of trials, of COMPLETE ones, and each objective's finite values in trial order."""
    t, v = table("TrialModel"), table("TrialValueModel")

    def read(conn: sa.Connection) -> tuple[int, int, list[list[float]]]:
        total = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id)).scalar_one()
        complete = conn.execute(
            sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
        ).scalar_one()
        rows = conn.execute(
            sa.select(v.c.objective, v.c.value, v.c.value_type)
            .select_from(v.join(t, t.c.trial_id == v.c.trial_id))
            .where(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
            .order_by(t.c.number)  # a fixed order: the same study always sums to the same last bit
        )
        out: list[list[float]] = [[] for _ in range(n_objectives)]
        for objective, value, value_type in rows:
            kind = getattr(value_type, "name", str(value_type))
            if kind == "FINITE" and value is not None and 0 <= objective < n_objectives:
                out[objective].append(float(value))
        return int(total), int(complete), out

    return st.transaction(read, read=True)


def delete_study_rows(st: Storage, study_id: int) -> None:
    """Remove studyhall's rows that belong to a study (called when the study is deleted)."""

    def delete(conn: sa.Connection) -> None:
        for tbl in (trial_metrics, events, leases):
            conn.execute(sa.delete(tbl).where(tbl.c.study_id == study_id))

    st.transaction(delete)
