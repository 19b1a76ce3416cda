"""storage/_leases.py on every backend: the lease rows and the future-dated Optuna heartbeat beside them."""

from __future__ import annotations

import pytest

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage import StudyNotFound
from studyhall.storage import _leases as leases
from studyhall.storage._optuna import table


def _heartbeat(store, trial_id):
    hb = table("TrialHeartbeatModel")
    return store.transaction(lambda c: c.execute(hb.select().where(hb.c.trial_id == trial_id)).first())


def _leased(store, study_name, lease_s):
    """A study and one trial asked with a lease of ``lease_s``, as the HTTP service asks."""
    study = Orchestrator(store).create_study(study_name)
    now = store.now()
    [t] = study._ask_with({"x": Float(0, 1)}, 1, leases.granting(study._study_id, study.name, lease_s, now + lease_s))
    return study, t, now


def _lease_of(store, trial_id):
    return [r for r in leases.expired(store, store.now() + 1e6, 10_000) if r.trial_id == trial_id]


def test_granted_renewed_and_taken_by_the_tell(store, study_name):
    _, t, now = _leased(store, study_name, 30.0)
    beat = _heartbeat(store, t.trial_id)
    assert beat is not None  # dated at the lease's end, so no stale check fails the trial before then
    assert leases.renew(store, t.trial_id, now + 1.0) == now + 31.0
    assert leases.renew(store, t.trial_id, now + 2.0, lease_s=60.0) == now + 62.0
    assert _heartbeat(store, t.trial_id).heartbeat > beat.heartbeat

    class Refused(Exception):
        pass

    def take_then_refuse(conn):
        leases.taking(t.trial_id, now + 3.0, key="k1")(conn)
        raise Refused  # a tell refused after taking the lease: its transaction rolls back

    with pytest.raises(Refused):
        store.transaction(take_then_refuse)
    [lease] = _lease_of(store, t.trial_id)  # still there: the take was rolled back with the tell
    assert (lease.lease_s, lease.expires_at) == (60.0, now + 62.0)
    assert not leases.told_by(store, t.trial_id, "k1")
    store.transaction(leases.taking(t.trial_id, now + 4.0, key="k2"))
    assert _lease_of(store, t.trial_id) == []
    assert leases.told_by(store, t.trial_id, "k2") and not leases.told_by(store, t.trial_id, "k1")
    store.transaction(leases.taking(t.trial_id, now + 5.0))  # never leased (any more): told as it is
    assert leases.renew(store, 10**9, now) is None  # never leased


def test_a_tell_after_the_lease_ran_out_is_refused(store, study_name):
    _, t, now = _leased(store, study_name, 1.0)
    with pytest.raises(leases.LeaseRanOut):
        store.transaction(leases.taking(t.trial_id, now + 5.0))
    assert len(_lease_of(store, t.trial_id)) == 1  # left for the sweeper, which fails the trial


def test_no_lease_is_granted_unless_the_study_still_has_its_name(store, study_name):
    # What a service with a cached study id meets when the study was deleted and its id
    # reused by another study: the lease's own statement checks the name, and the
    # trial's creation rolls back with it.
    study = Orchestrator(store).create_study(study_name)
    now = store.now()
    elsewhere = leases.granting(study._study_id, study_name + "-renamed", 30.0, now + 30.0)
    with pytest.raises(StudyNotFound):
        study._ask_with({"x": Float(0, 1)}, 1, elsewhere)
    assert study.trials() == []


def test_an_expired_lease_is_taken_by_one_sweeper_only(store, study_name):
    _, t, now = _leased(store, study_name, 1.0)
    later = now + 5.0
    assert leases.renew(store, t.trial_id, later) is leases.EXPIRED
    [row] = [r for r in leases.expired(store, later, 100) if r.trial_id == t.trial_id]
    assert leases.take(store, t.trial_id, row.expires_at, later)
    assert not leases.take(store, t.trial_id, row.expires_at, later)  # the other sweeper saw the same row
    leases.drop(store, t.trial_id)
    assert all(r.trial_id != t.trial_id for r in leases.expired(store, later, 100))
