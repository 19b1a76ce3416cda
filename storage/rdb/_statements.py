"""The storage's statements, built once with bind parameters.

Building a SQLAlchemy statement and its cache key costs about 90 µs; a prebuilt one
costs under 1 µs to look up. A trial's ask and tell run a dozen statements, so
every statement on a hot path is built here, once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState

from studyhall.storage._optuna import table

OWNER_ATTR = "studyhall:ask"
"""The system attribute holding a RUNNING trial's owner token (also its ask token).

Written with the trial (``commit_trial``) or its claim from the queue; removed when
the trial goes back to the queue, so that the process that held it before is fenced.
"""

RETRY_ATTR = "retry"
"""The user attribute of a retry (``Study.retry``): it re-runs its first attempt's parameters in that attempt's place."""


@dataclass(frozen=True)
class Statements:
    """Every prebuilt statement, by what it does."""

    lock_trial: Any
    lock_owned: Any
    owners: Any
    finish_owned: Any
    requeue_owned: Any
    requeue_unbegun: Any
    drop_owner: Any
    trial_number: Any
    lock_study: Any
    study_exists: Any
    waiting_head: Any
    waiting_any: Any
    count_trials: Any
    count_first_attempts: Any
    insert_trial: Any
    first_beat: Any
    param_exists: Any
    insert_param: Any
    first_distribution: Any
    set_trial: Any
    finish_running: Any
    drop_beat: Any
    find_token: Any
    state_and_end: Any
    study_name: Any
    study_id: Any
    directions: Any
    refresh_newer: Any
    refresh_with_ids: Any
    refresh_with_states: Any
    db_now: Any
    running_beats: Any


@functools.cache
def statements() -> Statements:
    """The statements (built on first use: Optuna's models import lazily)."""
    t, s, d = table("TrialModel"), table("StudyModel"), table("StudyDirectionModel")
    p, hb, sys_attrs = table("TrialParamModel"), table("TrialHeartbeatModel"), table("TrialSystemAttributeModel")
    user_attrs = table("TrialUserAttributeModel")
    tid: sa.BindParameter[int] = sa.bindparam("tid")
    sid: sa.BindParameter[int] = sa.bindparam("sid")
    n_params = sa.select(sa.func.count()).where(p.c.trial_id == t.c.trial_id).scalar_subquery()
    refresh = sa.select(t.c.trial_id, t.c.state, n_params, t.c.datetime_complete)
    # The trials above the watermark, and the cache's anchor (storage/rdb/_cache.py).
    newer = sa.or_(t.c.trial_id > sa.bindparam("watermark"), t.c.trial_id == sa.bindparam("anchor"))
    t2 = t.alias("owner")
    is_owner = sys_attrs.c.trial_id == tid, sys_attrs.c.key == OWNER_ATTR
    owner = sa.select(sys_attrs.c.value_json).where(*is_owner).scalar_subquery()
    owned = sa.exists().where(*is_owner, sys_attrs.c.value_json == sa.bindparam("owner"))
    requeue = (
        sa.update(t)
        .where(t.c.trial_id == tid, t.c.state == TrialState.RUNNING)
        .values(state=TrialState.WAITING, datetime_start=None)
    )
    return Statements(
        # FOR UPDATE is a no-op on SQLite, whose IMMEDIATE transactions already exclude writers.
        lock_trial=sa.select(t.c.state).where(t.c.trial_id == tid).with_for_update(),
        # The same lock, and the owner token in the same round trip (the fence of every write).
        lock_owned=sa.select(t.c.state, owner).where(t.c.trial_id == tid).with_for_update(),
        owners=sa.select(sys_attrs.c.trial_id, sys_attrs.c.value_json).where(
            sys_attrs.c.key == OWNER_ATTR, sys_attrs.c.trial_id.in_(sa.bindparam("ids", expanding=True))
        ),
        finish_owned=sa.update(t).where(t.c.trial_id == tid, t.c.state == TrialState.RUNNING, owned),
        requeue_owned=requeue.where(owned),
        # Another process's trial goes back only if it never began: a parameter written
        # since the stale check read it means it did.
        requeue_unbegun=requeue.where(~sa.exists().where(p.c.trial_id == tid)),
        drop_owner=sa.delete(sys_attrs).where(*is_owner),
        trial_number=sa.select(t.c.number).where(t.c.trial_id == tid),
        lock_study=sa.select(s.c.study_id).where(s.c.study_id == sid).with_for_update(),
        study_exists=sa.select(s.c.study_id).where(s.c.study_id == sid),
        # The oldest few enqueued trials, to claim one (pop_waiting_trial).
        waiting_head=sa.select(t.c.trial_id)
        .where(t.c.study_id == sid, t.c.state == TrialState.WAITING)
        .order_by(t.c.trial_id)
        .limit(8),
        # Whether any trial is enqueued (commit_trial(unless_queued=True)).
        waiting_any=sa.select(t.c.trial_id).where(t.c.study_id == sid, t.c.state == TrialState.WAITING).limit(1),
        count_trials=sa.select(sa.func.count()).where(t.c.study_id == sid),
        # What a total (max_total_trials) counts: every trial but retries, in any state.
        count_first_attempts=sa.select(sa.func.count()).where(
            t.c.study_id == sid,
            ~sa.exists().where(user_attrs.c.trial_id == t.c.trial_id, user_attrs.c.key == RETRY_ATTR),
        ),
        insert_trial=sa.insert(t),
        first_beat=sa.insert(hb).values(trial_id=tid, heartbeat=sa.func.now()),
        param_exists=sa.select(p.c.param_id).where(p.c.trial_id == tid, p.c.param_name == sa.bindparam("name")),
        insert_param=sa.insert(p),
        first_distribution=sa.select(p.c.distribution_json)
        .select_from(p.join(t, t.c.trial_id == p.c.trial_id))
        .where(
            t.c.study_id == sa.select(t2.c.study_id).where(t2.c.trial_id == tid).scalar_subquery(),
            p.c.param_name == sa.bindparam("name"),
        )
        .limit(1),
        set_trial=sa.update(t).where(t.c.trial_id == tid),
        # The check and the lock in one statement: of two processes ending one trial,
        # the second matches no row, on every dialect.
        finish_running=sa.update(t).where(t.c.trial_id == tid, t.c.state == TrialState.RUNNING),
        drop_beat=sa.delete(hb).where(hb.c.trial_id == tid),
        find_token=sa.select(t.c.trial_id, t.c.number)
        .select_from(t.join(sys_attrs, sys_attrs.c.trial_id == t.c.trial_id))
        .where(
            t.c.study_id == sid, sys_attrs.c.key == sa.bindparam("key"), sys_attrs.c.value_json == sa.bindparam("value")
        ),
        state_and_end=sa.select(t.c.state, t.c.datetime_complete).where(t.c.trial_id == tid),
        study_name=sa.select(s.c.study_name).where(s.c.study_id == sid),
        study_id=sa.select(s.c.study_id).where(s.c.study_name == sa.bindparam("name")),
        directions=sa.select(d.c.direction).where(d.c.study_id == sid).order_by(d.c.objective),
        refresh_newer=refresh.where(t.c.study_id == sid, newer),
        refresh_with_ids=refresh.where(
            t.c.study_id == sid, sa.or_(newer, t.c.trial_id.in_(sa.bindparam("ids", expanding=True)))
        ),
        refresh_with_states=refresh.where(
            t.c.study_id == sid, sa.or_(newer, t.c.state.in_((TrialState.RUNNING, TrialState.WAITING)))
        ),
        db_now=sa.select(sa.func.now()),
        running_beats=sa.select(t.c.trial_id, hb.c.heartbeat)
        .select_from(t.join(hb, hb.c.trial_id == t.c.trial_id))
        .where(t.c.study_id == sid, t.c.state == TrialState.RUNNING),
    )


@functools.cache
def beat_statement(dialect: str) -> Any:
    """Insert or move forward a trial's heartbeat to the database's clock (``tid`` bound)."""
    hb = table("TrialHeartbeatModel")
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        m = mysql_insert(hb).values(trial_id=sa.bindparam("tid"), heartbeat=sa.func.now())
        return m.on_duplicate_key_update(heartbeat=m.inserted.heartbeat)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        p = pg_insert(hb).values(trial_id=sa.bindparam("tid"), heartbeat=sa.func.now())
        return p.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": p.excluded.heartbeat})
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    q = sqlite_insert(hb).values(trial_id=sa.bindparam("tid"), heartbeat=sa.func.now())
    return q.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": q.excluded.heartbeat})
