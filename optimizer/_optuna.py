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
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


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
