"""Whole-study reads and deletes that Optuna's storage API would do in one query per study."""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

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
    return st.transaction(lambda c: sorted(r[0] for r in c.execute(sa.select(s.c.study_name))))


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
        counts: dict[int, int] = dict(conn.execute(sa.select(t.c.study_id, sa.func.count()).group_by(t.c.study_id)).all())
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

    return st.transaction(read)


def delete_study_rows(st: Storage, study_id: int) -> None:
    """Remove studyhall's rows that belong to a study (called when the study is deleted)."""

    def delete(conn: sa.Connection) -> None:
        for tbl in (trial_metrics, events, leases):
            conn.execute(sa.delete(tbl).where(tbl.c.study_id == study_id))

    st.transaction(delete)
