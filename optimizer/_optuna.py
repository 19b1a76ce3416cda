"""Every use of Optuna's private API in the optimizer (the storage's are in ``storage/_optuna.py``).

studyhall drives Optuna's ask and tell itself, to write a tell and its telemetry in
one transaction and to heartbeat trials outside ``optuna.Study.optimize``. That
needs a few things Optuna keeps private: the ids behind its ``Study`` and
``Trial`` objects, the thread-local flag and trial cache of a study, the pruner's
view of a study and a distribution's membership test. When an Optuna release
moves one of them, this is the module to change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage.rdb import Queued

if TYPE_CHECKING:
    from studyhall.storage._trials import TrialWrite
    from studyhall.storage.rdb import SQLStorage


def study_id(study: optuna.Study) -> int:
    """The storage id of an Optuna study."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of an Optuna trial (live or frozen)."""
    return trial._trial_id


def trial_id_of(obj: Any) -> int | None:
    """The storage id of a TrialHandle (``trial_id``), an Optuna trial (``_trial_id``) or an id; None if none."""
    tid = getattr(obj, "trial_id", getattr(obj, "_trial_id", obj))
    return tid if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 else None


def study_id_of(trial: Any) -> int | None:
    """The study id of a live Optuna trial (``trial.study``), None for anything else."""
    study = getattr(trial, "study", None)
    return getattr(study, "_study_id", None)


@contextlib.contextmanager
def quiet_ask(study: optuna.Study) -> Iterator[None]:
    """Ask without Optuna's warning that heartbeats are on outside ``optimize()``.

    studyhall heartbeats ask/tell trials itself. The flag is thread-local, unlike
    a warnings filter, so other threads keep their warnings.
    """
    tl = study._thread_local
    before = tl.in_optimize_loop
    tl.in_optimize_loop = True
    try:
        yield
    finally:
        tl.in_optimize_loop = before


def ask(
    study: optuna.Study,
    storage: SQLStorage,
    dists: dict[str, BaseDistribution],
    *,
    heartbeat: bool,
    total: int | None = None,
    extra: TrialWrite | None = None,
) -> optuna.Trial:
    """``optuna.Study.ask(fixed_distributions=dists)``, with a new trial written in one transaction.

    The trial is begun in memory (``SQLStorage.begin_trial``), Optuna's ``Trial`` and
    the sampler fill in its parameters, and ``commit_trial`` writes the row, the
    parameters and (``heartbeat``) its first beat together. A failure before the
    commit writes nothing. An enqueued (WAITING) trial is claimed first, as Optuna
    does: the commit's transaction looks for one (the queue is nearly always empty, so
    this costs one statement rather than a transaction before every ask), and if one
    waits, the begun trial is dropped and the queued one claimed. ``total``: a new
    trial is created only while the study has fewer trials besides retries (else
    ``TotalReached``); a queued one is always claimed.
    ``extra(conn, trial_id)`` is written in the new trial's transaction (a claimed one's
    in a transaction of its own, after the claim): the HTTP service's lease.
    """
    sid = study._study_id
    while True:
        study._thread_local.cached_all_trials = None  # Optuna syncs with the storage once per ask
        provisional = storage.begin_trial(sid)
        try:
            trial = optuna.Trial(study, provisional)
            for name, dist in dists.items():
                trial._suggest(name, dist)
            frozen = storage.commit_trial(
                provisional, heartbeat=heartbeat, total=total, extra=extra, unless_queued=True
            )
        except BaseException as exc:
            storage.discard_trial(provisional)
            if not isinstance(exc, Queued):
                raise
        else:
            trial._trial_id = frozen._trial_id  # the storage also maps the provisional id, but say the truth
            return trial
        waiting = storage.pop_waiting_trial(sid)
        if waiting is not None:
            return _claimed(study, storage, waiting, dists, heartbeat=heartbeat, extra=extra)
        # another process claimed the queued trial first: ask again


def _claimed(
    study: optuna.Study,
    storage: SQLStorage,
    waiting: int,
    dists: dict[str, BaseDistribution],
    *,
    heartbeat: bool,
    extra: TrialWrite | None,
) -> optuna.Trial:
    # A claimed trial is RUNNING already; its first beat and lease follow in transactions of their own.
    if heartbeat:
        storage.record_heartbeat(waiting)
    study._thread_local.cached_all_trials = None
    trial = optuna.Trial(study, waiting)
    for name, dist in dists.items():
        trial._suggest(name, dist)
    if extra is not None:
        storage.transaction(lambda conn: extra(conn, waiting))
    return trial


def after_trial(study: optuna.Study, running: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
    """What ``optuna.Study.tell`` does before it writes: the sampler's ``after_trial`` hook.

    GridSampler stops an exhausted grid there and constraints are stored; the hook
    sees the pruner's view of the study, with the study's trial cache dropped.
    """
    study._thread_local.cached_all_trials = None
    view = optuna.pruners._filter_study(study, running)
    study.sampler.after_trial(view, running, state, values)


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (an external representation) lies in ``distribution``."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
