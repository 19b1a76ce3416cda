"""One owner per trial: a process that stalled past the grace period cannot write to the trial it lost.

Two ``Storage`` objects stand for two hosts. Host A asks a trial ahead (RUNNING, no
parameter yet) and stalls: its heartbeat is aged past the grace period. Host B's stale
check puts the trial back in the queue and B's next ask claims it (same id, same
number). A wakes: its ``suggest_*``, ``report``, attributes, tell and heartbeat must
all be refused, and B's run of the trial must be the one stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from studyhall.optimizer import Float, Orchestrator
from studyhall.optimizer import _optuna as optuna_glue
from studyhall.storage import TrialOwnershipLost
from studyhall.storage._optuna import table
from studyhall.storage._storage import Storage
from studyhall.storage.rdb._statements import statements


@pytest.fixture
def hosts(storage_url: str) -> Iterator[tuple[Storage, Storage]]:
    a = Storage(storage_url, heartbeat_interval=1, grace_period=1)
    b = Storage(storage_url, heartbeat_interval=1, grace_period=1)
    yield a, b
    a.close()
    b.close()


def _stall(st: Storage, trial_id: int) -> None:
    """What a SIGSTOPped host looks like from the database: its trial's last beat is old."""
    st.heartbeat.stop()  # A's thread must not beat meanwhile (it would, unlike a stopped process)
    st.heartbeat.discard(trial_id)
    hb = table("TrialHeartbeatModel")

    def age(conn: sa.Connection) -> None:
        now = conn.execute(statements().db_now).scalar_one()
        old = now.replace(tzinfo=None) - timedelta(hours=1) if hasattr(now, "replace") else now
        conn.execute(sa.update(hb).where(hb.c.trial_id == trial_id).values(heartbeat=old))

    st.transaction(age)


def _taken_over(hosts: tuple[Storage, Storage], study_name: str):  # type: ignore[no-untyped-def]
    a, b = hosts
    Orchestrator(a).create_study(study_name, direction="minimize")
    study_a, study_b = Orchestrator(a).load_study(study_name), Orchestrator(b).load_study(study_name)
    lost = study_a._ask_trial({})  # asked ahead: RUNNING, no parameter yet
    trial_id = optuna_glue.trial_id(lost)
    _stall(a, trial_id)
    assert study_b.fail_stale_trials() == []  # never began: back to the queue, not failed
    assert study_b.trial(lost.number).state == TrialState.WAITING
    taken = study_b._ask_trial({})
    assert (optuna_glue.trial_id(taken), taken.number) == (trial_id, lost.number)
    return study_a, study_b, lost, taken


def test_a_stalled_owner_cannot_write_to_a_trial_handed_to_another(hosts, study_name):
    study_a, study_b, lost, taken = _taken_over(hosts, study_name)
    x_b = taken.suggest_float("x", 0, 1)
    with pytest.raises(TrialOwnershipLost, match=f"trial {lost.number} is no longer this process's"):
        lost.suggest_float("x", 0, 1)
    for write in (lambda: lost.report(0.5, 1), lambda: lost.set_user_attr("k", 1)):
        with pytest.raises(TrialOwnershipLost):
            write()
    with pytest.raises(TrialOwnershipLost):
        study_a.tell(lost.number, 123.0)
    study_b.tell(taken.number, 1.0)
    stored = study_b.trial(taken.number)
    assert stored.state == TrialState.COMPLETE and stored.value == 1.0
    assert stored.params == {"x": x_b} and not stored.intermediate_values and "k" not in stored.user_attrs


def test_a_stalled_owner_cannot_tell_after_the_new_owner_did(hosts, study_name):
    study_a, study_b, lost, taken = _taken_over(hosts, study_name)
    study_b.tell(taken.number, 2.0)
    with pytest.raises(TrialOwnershipLost):
        study_a.tell(lost.number, 123.0)
    assert study_b.trial(taken.number).value == 2.0


def test_a_stalled_owner_neither_beats_nor_requeues_the_trial_it_lost(hosts, study_name):
    a, b = hosts
    study_a, study_b, lost, taken = _taken_over(hosts, study_name)
    trial_id = optuna_glue.trial_id(lost)
    assert a.optuna.record_heartbeats([trial_id]) == [trial_id]  # no beat: B's trial must go stale if B dies
    assert not a.optuna.requeue_trial(trial_id)  # A's "give my queued trial back" must not take B's
    assert study_b.trial(taken.number).state == TrialState.RUNNING
    assert b.optuna.record_heartbeats([trial_id]) == []


def test_a_stale_trial_that_began_meanwhile_is_not_requeued(hosts, study_name):
    a, b = hosts
    Orchestrator(a).create_study(study_name, direction="minimize")
    study_a, study_b = Orchestrator(a).load_study(study_name), Orchestrator(b).load_study(study_name)
    trial = study_a._ask_trial({})
    trial_id = optuna_glue.trial_id(trial)
    trial.suggest_float("x", 0, 1)  # it began after the stale check read it without parameters
    assert not b.optuna.requeue_trial(trial_id)
    assert study_b.trial(trial.number).state == TrialState.RUNNING


def test_the_owner_writes_as_before(hosts, study_name):
    a, _ = hosts
    Orchestrator(a).create_study(study_name, direction="maximize")
    study = Orchestrator(a).load_study(study_name)
    handle = study.ask({"x": Float(0, 1)})
    study.enqueue({"x": 0.5})
    queued = study.ask({"x": Float(0, 1)})  # claimed from the queue: a fresh owner token
    for h, v in ((handle, 1.0), (queued, 2.0)):
        assert study.tell(h, v).state == TrialState.COMPLETE
    assert study.trial(queued.number).params == {"x": 0.5}
