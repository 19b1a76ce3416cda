"""Trial leases: the rows of ``studyhall_leases`` and the future-dated Optuna heartbeat beside them.

The HTTP service leases the trials it hands out (``optimizer/service/_leases.py``
says why, and how a heartbeat dated at the lease's end makes every stale check
agree with it). Every change here is a conditional statement, so that of two
service processes on one database only one wins: a tell and an expiry claim the
same row, two sweepers race on a compare-and-set of ``expires_at``. Times are the
database clock's epoch seconds, given by the caller.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from studyhall.storage._errors import InvalidRequest, StudyNotFound
from studyhall.storage._optuna import table
from studyhall.storage._schema import leases
from studyhall.storage._sql import driver_upsert, upsert
from studyhall.storage._storage import Storage
from studyhall.storage._trials import InTransaction, TrialWrite

# The system attribute naming the tell that finished a leased trial (TellRequest.key).
TELL_KEY_ATTR = "studyhall:tell_key"

# Built once: a statement's construction costs more than its execution on SQLite.
_LEASE = sa.select(leases).where(leases.c.trial_id == sa.bindparam("tid"))
_NOW = sa.select(sa.func.now())
_CLAIM = sa.delete(leases).where(leases.c.trial_id == sa.bindparam("tid"), leases.c.expires_at >= sa.bindparam("now"))


@dataclass(frozen=True)
class Lease:
    """A lease row: the trial, its study, the lease's length and when it ends (negative: being expired)."""

    trial_id: int
    study_id: int
    lease_s: float
    expires_at: float


class LeaseExpired:
    """The type of :data:`EXPIRED`, what ``renew`` returns for a lease that ran out."""


EXPIRED = LeaseExpired()


class LeaseRanOut(InvalidRequest):
    """Raised inside a tell's transaction (:func:`taking`) to roll it back: the lease had run out."""


def granting(study_id: int, name: str, lease_s: float, expires_at: float) -> TrialWrite:
    """The lease of a trial being created, for its creating transaction (``Study._ask_with``).

    StudyNotFound (rolling the creation back) unless the study still exists under ``name``:
    a service that caches a study's id checks it in the transaction that writes, instead
    of looking the name up before each request, so a deleted study (or an id a later
    study reused) is refused all the same.
    """

    row = {"sid": study_id, "name": name, "lease_s": lease_s, "expires_at": expires_at}

    def write(conn: sa.Connection, trial_id: int) -> None:
        # The check and the lease in one statement: no row is inserted unless the study is still so named.
        if conn.execute(_insert_if_named(), {**row, "tid": trial_id}).rowcount != 1:
            raise StudyNotFound(f"study {name!r} was deleted")
        _beat(conn, [trial_id], lease_s)

    return write


@functools.cache
def _insert_if_named() -> Any:
    s = table("StudyModel")
    found = sa.select(
        sa.bindparam("tid", type_=sa.Integer),
        s.c.study_id,
        sa.bindparam("lease_s", type_=sa.Double),
        sa.bindparam("expires_at", type_=sa.Double),
    ).where(s.c.study_id == sa.bindparam("sid"), s.c.study_name == sa.bindparam("name"))
    insert = sa.insert(leases).from_select(["trial_id", "study_id", "lease_s", "expires_at"], found)
    return insert.execution_options(preserve_rowcount=True)  # psycopg reports -1 without it


def taking(trial_id: int, now: float, key: str | None = None) -> InTransaction:
    """A tell's taking of its trial's lease, in the tell's transaction: LeaseRanOut (rolling the tell back) if it ran out.

    A trial that was never leased (asked in-process) is told as it is. ``key``, the
    tell's own name, is stored with it (:func:`told_by`).
    """

    def write(conn: sa.Connection) -> None:
        if key is not None:
            row = {"trial_id": trial_id, "key": TELL_KEY_ATTR, "value_json": json.dumps(key)}
            driver_upsert(conn, table("TrialSystemAttributeModel"), [row], keys=("trial_id", "key"))
        # The valid lease first: one statement on the hot path.
        if conn.execute(_CLAIM, {"tid": trial_id, "now": now}).rowcount == 1:
            return
        if conn.execute(_LEASE, {"tid": trial_id}).first() is not None:
            raise LeaseRanOut(f"the lease of the trial with id {trial_id} ran out")

    return write


def told_by(st: Storage, trial_id: int, key: str) -> bool:
    """Whether the trial was told by the tell named ``key`` (its answer may have been lost)."""
    attrs = table("TrialSystemAttributeModel")
    query = sa.select(attrs.c.value_json).where(attrs.c.trial_id == trial_id, attrs.c.key == TELL_KEY_ATTR)
    stored = st.transaction(lambda conn: conn.execute(query).scalar(), read=True)
    return stored is not None and json.loads(stored) == key


def renew(st: Storage, trial_id: int, now: float, lease_s: float | None = None) -> float | LeaseExpired | None:
    """Extend a lease still valid at ``now`` by its length (or ``lease_s``): the new expiry; EXPIRED; None if never leased."""

    def write(conn: sa.Connection) -> float | LeaseExpired | None:
        row = conn.execute(sa.select(leases.c.lease_s).where(leases.c.trial_id == trial_id)).first()
        if row is None:
            return None
        length = float(lease_s if lease_s is not None else row.lease_s)
        done = conn.execute(
            sa.update(leases)
            .where(leases.c.trial_id == trial_id, leases.c.expires_at >= now)
            .values(lease_s=length, expires_at=now + length)
        ).rowcount
        if done != 1:
            return EXPIRED
        _beat(conn, [trial_id], length)
        return now + length

    return st.transaction(write)


def expired(st: Storage, now: float, limit: int) -> list[Lease]:
    """Up to ``limit`` leases that ended before ``now``, the oldest first (claimed ones included)."""
    query = sa.select(leases).where(leases.c.expires_at < now).order_by(leases.c.expires_at).limit(limit)
    rows = st.transaction(lambda c: c.execute(query).all(), read=True)
    return [Lease(r.trial_id, r.study_id, r.lease_s, r.expires_at) for r in rows]


def take(st: Storage, trial_id: int, seen: float, now: float) -> bool:
    """Claim an expired lease for expiry: compare-and-set ``expires_at`` from ``seen`` to ``-now``.

    Of several sweepers that saw the same row, only the one whose update matches proceeds.
    """
    update = sa.update(leases).where(leases.c.trial_id == trial_id, leases.c.expires_at == seen).values(expires_at=-now)
    return st.transaction(lambda c: c.execute(update).rowcount) == 1


def drop(st: Storage, trial_id: int) -> None:
    """Forget a trial's lease."""
    st.transaction(lambda c: c.execute(sa.delete(leases).where(leases.c.trial_id == trial_id)))


def _beat(conn: sa.Connection, trial_ids: Sequence[int], seconds: float) -> None:
    # Optuna's heartbeat column is a naive datetime in the database's now() frame
    # (UTC on SQLite, the session time zone elsewhere): date it from that clock.
    # SQLite's and MySQL's now() have whole seconds: the extra second keeps the
    # beat from being dated before the lease ends.
    now = conn.execute(_NOW).scalar_one().replace(tzinfo=None)
    when = now + datetime.timedelta(seconds=seconds + 1)
    # One statement whether or not the trial has a beat yet (Optuna's trial_id is unique there).
    upsert(conn, table("TrialHeartbeatModel"), [{"trial_id": t, "heartbeat": when} for t in trial_ids], ("trial_id",))
