"""storage/_leases.py on every backend: the lease rows and the future-dated Optuna heartbeat beside them."""

from __future__ import annotations

from studyhall.optimizer import Float, Orchestrator
from studyhall.storage import _leases as leases
from studyhall.storage._optuna import table


def _heartbeat(store, trial_id):
    hb = table("TrialHeartbeatModel")
    return store.transaction(lambda c: c.execute(hb.select().where(hb.c.trial_id == trial_id)).first())


def test_grant_renew_claim_restore(store, study_name):
    study = Orchestrator(store).create_study(study_name)
    t = study.ask({"x": Float(0, 1)}, keepalive=False)
    now = store.now()
    leases.grant(store, study._study_id, [t.trial_id], 30.0, now + 30.0)
    beat = _heartbeat(store, t.trial_id)
    assert beat is not None  # dated at the lease's end, so no stale check fails the trial before then
    assert leases.renew(store, t.trial_id, now + 1.0) == now + 31.0
    assert leases.renew(store, t.trial_id, now + 2.0, lease_s=60.0) == now + 62.0
    assert _heartbeat(store, t.trial_id).heartbeat > beat.heartbeat
    lease = leases.claim(store, t.trial_id, now + 3.0)
    assert isinstance(lease, leases.Lease) and (lease.trial_id, lease.lease_s) == (t.trial_id, 60.0)
    assert leases.claim(store, t.trial_id, now + 3.0) is None  # taken: a second tell finds no lease
    leases.restore(store, lease)
    assert leases.claim(store, t.trial_id, now + 4.0) == lease
    assert leases.renew(store, 10**9, now) is None  # never leased


def test_an_expired_lease_is_taken_by_one_sweeper_only(store, study_name):
    study = Orchestrator(store).create_study(study_name)
    t = study.ask({"x": Float(0, 1)}, keepalive=False)
    now = store.now()
    leases.grant(store, study._study_id, [t.trial_id], 1.0, now + 1.0)
    later = now + 5.0
    assert leases.renew(store, t.trial_id, later) is leases.EXPIRED
    assert leases.claim(store, t.trial_id, later) is leases.EXPIRED
    [row] = [r for r in leases.expired(store, later, 100) if r.trial_id == t.trial_id]
    assert leases.take(store, t.trial_id, row.expires_at, later)
    assert not leases.take(store, t.trial_id, row.expires_at, later)  # the other sweeper saw the same row
    leases.drop(store, t.trial_id)
    assert all(r.trial_id != t.trial_id for r in leases.expired(store, later, 100))
