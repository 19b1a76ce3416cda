"""Leases: a trial asked over HTTP stays RUNNING only while its client tells or renews it.

Why not the heartbeat thread? studyhall fails a trial as stale when the *process*
running it stops heartbeating (``storage/_heartbeat.py``). Over HTTP the service
does not run the trial, a client somewhere else does: if the service's thread
kept the trial alive, a dead client's trial would stay RUNNING for as long as the
service lives; if nothing beat for it, every process's stale check
(``Study.fail_stale_trials``, Optuna's own) would fail it ``grace_period`` (10 s)
after the ask, long before a 300 s lease ends. So leased trials are never given
to the heartbeat thread, and the lease is written into Optuna's terms instead::

    ask        ─> the trial, its parameters, its lease row (expires_at = db now + lease_s)
                  and an Optuna heartbeat row dated expires_at (the future): ONE transaction
    heartbeat  ─> both moved forward, only while the lease is still valid
    tell       ─> Study.tell's one transaction also deletes the lease row while it is
                  valid; if it ran out, the whole tell rolls back (409 LeaseExpired)
    sweep      ─> expired row claimed (expires_at := -claim time) ─> user_attrs
                  error "lease expired" ─> FAIL ─> Study.retry ─> row deleted

The future-dated heartbeat makes every stale check in every process agree with
the lease without knowing about it: by Optuna's rule (now - heartbeat > grace)
the trial turns stale ``grace_period`` after its lease ends. The service's sweep
(a background task, and a throttled check on requests) fails it first, with the
precise reason; if every service process is down, any worker's stale check still
fails and retries it a grace period later. Nothing stays RUNNING forever.

Exactly-once across service processes on one database: a tell and an expiry
claim the same row with conditional statements, so only one of them proceeds;
two sweeps race on a compare-and-set of ``expires_at``; and against
``Study.fail_stale_trials`` in other processes, whoever's conditional update of
the trial's state (``Study.fail_abandoned``) matches the RUNNING row retries the
trial, the loser changes nothing and only deletes the lease. A sweeper that died
mid-claim is taken over after ``RECLAIM_S``. The statements are in
``storage/_leases.py``; this module keeps the clock, the sweep and the policy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from studyhall.optimizer.study._study import TrialHandle
from studyhall.storage import Storage
from studyhall.storage import _leases as lease_rows
from studyhall.storage._leases import Lease, LeaseExpired
from studyhall.storage._trials import InTransaction

if TYPE_CHECKING:
    from studyhall.optimizer.study._space import Space
    from studyhall.optimizer.study._study import Study

_log = logging.getLogger("studyhall.service")

CLOCK_SYNC_S = 30.0
RECLAIM_S = 60.0  # a claimed expiry not finished by then was abandoned by a dead process
SWEEP_BATCH = 100


class Leases:
    """Hands out leased trials and expires the leases nobody renewed.

    Args:
        storage: the studyhall storage.
        study_of: the Study of a study id (the service's cache), for retries.
        sweep_interval: seconds between expiry checks triggered by requests.
        on_expire: called with (study name, trial number) for each trial this process expired.
    """

    def __init__(
        self,
        storage: Storage,
        study_of: Callable[[int], Study],
        *,
        sweep_interval: float = 1.0,
        on_expire: Callable[[str, int], None] | None = None,
    ) -> None:
        self.storage = storage
        self._study_of = study_of
        self.sweep_interval = sweep_interval
        self._on_expire = on_expire or (lambda _name, _number: None)
        self._next_sweep = 0.0
        self._sweeping = threading.Lock()
        self._offset = 0.0  # database clock - this host's clock
        self._synced = -math.inf

    def now(self) -> float:
        """The database clock, estimated from this host's (re-synced every CLOCK_SYNC_S).

        Leases tolerate milliseconds of error; a round trip per lease operation for
        ``Storage.now()`` would cost more than the lease itself.
        """
        if time.monotonic() - self._synced > CLOCK_SYNC_S:
            before = time.time()
            db = self.storage.now()
            self._offset = db - (before + time.time()) / 2
            self._synced = time.monotonic()
        return time.time() + self._offset

    # ---- ask, renew, claim -------------------------------------------------------------

    def ask(self, study: Study, space: Space | None, k: int, lease_s: float) -> tuple[list[TrialHandle], float]:
        """``k`` trials of ``study``, each leased for ``lease_s`` seconds; also their expiry time.

        Each trial's lease is written in the transaction that creates it (no trial
        exists unleased, even for a moment), and that transaction also checks that the
        study still exists under its name: StudyNotFound if it was deleted meanwhile.
        """
        expires = self.now() + lease_s
        # The lease keeps these alive, not this process's heartbeat.
        return study._ask_with(space, k, lease_rows.granting(study._study_id, study.name, lease_s, expires)), expires

    def renew(self, trial_id: int, lease_s: float | None = None) -> float | LeaseExpired | None:
        """Extend a valid lease (by its own length, or ``lease_s``); EXPIRED, or None if never leased."""
        return lease_rows.renew(self.storage, trial_id, self.now(), lease_s)

    def claiming(self, trial_id: int, key: str | None = None) -> InTransaction:
        """What a tell writes in its own transaction: take the trial's lease (LeaseRanOut rolls the tell back), and its key."""
        return lease_rows.taking(trial_id, self.now(), key)

    def told_by(self, trial_id: int, key: str) -> bool:
        """Whether the tell named ``key`` is the one that finished the trial."""
        return lease_rows.told_by(self.storage, trial_id, key)

    # ---- expiry ------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether ``sweep_interval`` has passed since the last sweep."""
        return time.monotonic() >= self._next_sweep

    def maybe_sweep(self) -> None:
        """Run :meth:`sweep` if ``sweep_interval`` has passed and no other thread is sweeping."""
        if time.monotonic() < self._next_sweep or not self._sweeping.acquire(blocking=False):
            return
        try:
            self._next_sweep = time.monotonic() + self.sweep_interval
            self.sweep()
        finally:
            self._sweeping.release()

    def sweep(self) -> list[tuple[str, int]]:
        """FAIL (and retry per the study's ``retries``) every trial whose lease ran out.

        Returns (study name, trial number) of each trial this call expired.
        """
        now = self.now()
        expired = []
        for lease in lease_rows.expired(self.storage, now, SWEEP_BATCH):
            if lease.expires_at < 0 and now + lease.expires_at < RECLAIM_S:
                continue  # another process is expiring it right now
            if not lease_rows.take(self.storage, lease.trial_id, lease.expires_at, now):
                continue
            try:
                done = self._expire(lease)
            except Exception:  # one bad row must not stop the others; it is reclaimed later
                _log.exception("expiring the lease of trial %s failed", lease.trial_id)
                continue
            if done is not None:
                expired.append(done)
                self._on_expire(*done)
        return expired

    def _expire(self, lease: Lease) -> tuple[str, int] | None:
        try:
            study = self._study_of(lease.study_id)
            frozen = self.storage.optuna.get_trial(lease.trial_id)
        except KeyError:  # the study or trial was deleted meanwhile
            lease_rows.drop(self.storage, lease.trial_id)
            return None
        result = None
        if frozen.state == TrialState.RUNNING:
            reason = (
                f"lease expired: no tell or heartbeat within {lease.lease_s:g}s; the client "
                "evaluating this trial died, hung or lost its connection"
            )
            if study.fail_abandoned(frozen, reason=reason, failure="lease"):
                result = (study.name, frozen.number)
        lease_rows.drop(self.storage, lease.trial_id)
        return result
