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
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from studyhall.storage._optuna import table
from studyhall.storage._schema import leases
from studyhall.storage._storage import Storage


@dataclass(frozen=True)
class Lease:
    """A lease row: the trial, its study, the lease's length and when it ends (negative: being expired)."""

    trial_id: int
    study_id: int
    lease_s: float
    expires_at: float


class LeaseExpired:
    """The type of :data:`EXPIRED`, what ``renew`` and ``claim`` return for a lease that ran out."""


EXPIRED = LeaseExpired()


def grant(st: Storage, study_id: int, trial_ids: Sequence[int], lease_s: float, expires_at: float) -> None:
    """Lease new trials until ``expires_at``, and date their Optuna heartbeat at that moment."""

    def write(conn: sa.Connection) -> None:
        conn.execute(
            sa.insert(leases),
            [{"trial_id": t, "study_id": study_id, "lease_s": lease_s, "expires_at": expires_at} for t in trial_ids],
        )
        _beat(conn, trial_ids, lease_s)

    st.transaction(write)


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


def claim(st: Storage, trial_id: int, now: float) -> Lease | LeaseExpired | None:
    """Delete a lease still valid at ``now`` (a tell takes it): the row; EXPIRED; None if never leased."""

    def write(conn: sa.Connection) -> Lease | LeaseExpired | None:
        row = conn.execute(sa.select(leases).where(leases.c.trial_id == trial_id)).first()
        if row is None:
            return None
        done = conn.execute(sa.delete(leases).where(leases.c.trial_id == trial_id, leases.c.expires_at >= now)).rowcount
        if done != 1:
            return EXPIRED
        return Lease(row.trial_id, row.study_id, row.lease_s, row.expires_at)

    return st.transaction(write)


def restore(st: Storage, lease: Lease) -> None:
    """Put back a lease that :func:`claim` took (the tell was rejected; the trial still runs)."""

    def write(conn: sa.Connection) -> None:
        conn.execute(sa.delete(leases).where(leases.c.trial_id == lease.trial_id))
        conn.execute(
            sa.insert(leases).values(
                trial_id=lease.trial_id, study_id=lease.study_id, lease_s=lease.lease_s, expires_at=lease.expires_at
            )
        )

    st.transaction(write)


def expired(st: Storage, now: float, limit: int) -> list[Lease]:
    """Up to ``limit`` leases that ended before ``now``, the oldest first (claimed ones included)."""
    query = sa.select(leases).where(leases.c.expires_at < now).order_by(leases.c.expires_at).limit(limit)
    rows = st.transaction(lambda c: c.execute(query).all())
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
    hb = table("TrialHeartbeatModel")
    # SQLite's and MySQL's now() have whole seconds: the extra second keeps the
    # beat from being dated before the lease ends.
    now = conn.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
    when = now + datetime.timedelta(seconds=seconds + 1)
    ids = list(trial_ids)
    done = conn.execute(sa.update(hb).where(hb.c.trial_id.in_(ids)).values(heartbeat=when)).rowcount
    if done < len(ids):
        have = set(conn.execute(sa.select(hb.c.trial_id).where(hb.c.trial_id.in_(ids))).scalars())
        conn.execute(sa.insert(hb), [{"trial_id": t, "heartbeat": when} for t in ids if t not in have])
