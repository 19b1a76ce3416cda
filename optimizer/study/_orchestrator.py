"""Orchestrator: the front door that creates, loads, lists and deletes studies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from studyhall.optimizer.study._study import SAMPLER_ATTR, Study
from studyhall.storage import DuplicateStudy, InvalidRequest, Storage, StudyNotFound, connect, retrying
from studyhall.storage._limits import check_name
from studyhall.storage._studies import delete_study_rows, study_names, study_rows

SAMPLERS = ("tpe", "random", "cmaes", "nsga2")


@dataclass(frozen=True)
class StudyInfo:
    """One line of ``list_studies``: name, directions, trial count and best value."""

    name: str
    directions: list[str]
    n_trials: int
    best_value: float | None


def make_sampler(sampler: str | optuna.samplers.BaseSampler | None, seed: int | None) -> optuna.samplers.BaseSampler:
    """An Optuna sampler from a name ("tpe", "random", "cmaes", "nsga2") or as given."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    seed = _check_seed(seed)
    name = (sampler or "tpe").lower() if isinstance(sampler, str) or sampler is None else sampler
    if name == "tpe":
        # constant_liar: trials still running count as poor results, so parallel
        # asks (ask_batch, worker pools, many hosts) spread out instead of colliding.
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise InvalidRequest(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)} or an optuna sampler")


def _check_name(name: Any) -> str:
    check_name("study name", name)
    if not name.strip():
        raise InvalidRequest(f"a study name must not be blank; got {name!r}")
    return str(name)


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise InvalidRequest(f"seed must be an integer from 0 to 2**32 - 1 (or None); got {seed!r:.60}")
    return seed


def _directions(direction: str | None, directions: Sequence[str] | None) -> list[str]:
    if direction is not None and directions is not None:
        raise InvalidRequest("pass direction= or directions=[...], not both")
    dirs = list(directions) if directions is not None else [direction or "minimize"]
    if not dirs:
        raise InvalidRequest("directions must name at least one objective")
    for d in dirs:
        if not isinstance(d, str) or d.lower() not in ("minimize", "maximize"):
            raise InvalidRequest(f"direction {d!r} is neither 'minimize' nor 'maximize'")
    return [d.lower() for d in dirs]


class Orchestrator:
    """Creates, loads, lists and deletes studies on one storage.

    Example:
        >>> orch = Orchestrator("sqlite:///studyhall.db")  # doctest: +SKIP
        >>> study = orch.create_study("qa", direction="maximize", sampler="tpe", seed=0)  # doctest: +SKIP
    """

    def __init__(self, storage: str | Storage | None = None) -> None:
        self.storage: Storage = connect(storage)

    def __repr__(self) -> str:
        return f"Orchestrator({self.storage!r})"

    def create_study(
        self,
        name: str,
        direction: str | None = None,
        *,
        directions: Sequence[str] | None = None,
        sampler: str | optuna.samplers.BaseSampler | None = "tpe",
        seed: int | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        load_if_exists: bool = False,
        retries: int | None = None,
    ) -> Study:
        """Create study ``name`` (DuplicateStudy if it exists, unless ``load_if_exists``).

        Args:
            direction: "minimize" (default) or "maximize"; or ``directions=[...]``.
            sampler: "tpe" (multivariate, constant liar), "random", "cmaes", "nsga2",
                or any Optuna sampler.
            seed: seeds the named sampler.
            pruner: an Optuna pruner for ``should_prune`` (default: none).
            retries: re-runs of a crashed, hung or stale trial with the same parameters.
        """
        _check_name(name)
        dirs = _directions(direction, directions)
        smp = make_sampler(sampler, seed)
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise InvalidRequest(f"retries must be an integer >= 0; got {retries!r}")
        existing = self.storage.study_id(name)
        if existing is not None:
            if not load_if_exists:
                raise DuplicateStudy(
                    f"study {name!r} already exists; load it with load_study({name!r}) or pass load_if_exists=True"
                )
            study = self.load_study(name, sampler=sampler, seed=seed, pruner=pruner)
            if study.directions != dirs:
                raise InvalidRequest(f"study {name!r} exists with directions {study.directions}, not {dirs}")
        else:
            try:
                ostudy = retrying(
                    optuna.create_study,
                    study_name=name,
                    storage=self.storage.optuna,
                    directions=dirs,
                    sampler=smp,
                    pruner=pruner or optuna.pruners.NopPruner(),
                    load_if_exists=load_if_exists,
                )
            except optuna.exceptions.DuplicatedStudyError as exc:  # another process won the race
                raise DuplicateStudy(f"study {name!r} was created by another process meanwhile") from exc
            study = Study(self.storage, ostudy)
            if isinstance(sampler, str) or sampler is None:
                retrying(
                    self.storage.optuna.set_study_system_attr,
                    study._study_id,
                    SAMPLER_ATTR,
                    {"name": (sampler or "tpe").lower(), "seed": seed},
                )
        if retries is not None:
            study.retries = retries
        return study

    def load_study(
        self,
        name: str,
        *,
        sampler: str | optuna.samplers.BaseSampler | None = None,
        seed: int | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> Study:
        """Open an existing study; its trials left RUNNING by dead processes are failed (and retried).

        Without ``sampler`` the sampler named at creation is rebuilt (unseeded, so
        that several processes loading one study do not sample the same points).
        """
        _check_name(name)
        study_id = self.storage.study_id(name)
        if study_id is None:
            known = self.study_names()
            hint = f"known studies: {', '.join(known[:20])}" if known else "the storage has no studies yet"
            raise StudyNotFound(f"no study named {name!r} in {self.storage!r}; {hint}")
        if sampler is None:
            saved = self.storage.optuna.get_study_system_attrs(study_id).get(SAMPLER_ATTR) or {}
            sampler = saved.get("name", "tpe")
        ostudy = retrying(
            optuna.load_study,
            study_name=name,
            storage=self.storage.optuna,
            sampler=make_sampler(sampler, seed),
            pruner=pruner or optuna.pruners.NopPruner(),
        )
        study = Study(self.storage, ostudy)
        study.fail_stale_trials()
        return study

    def study_names(self) -> list[str]:
        """Every study name in the storage, sorted."""
        return study_names(self.storage)

    def list_studies(self) -> list[StudyInfo]:
        """Every study with its directions, number of trials and best value (one query each)."""
        return [StudyInfo(*row) for row in study_rows(self.storage)]

    def delete_study(self, name: str) -> None:
        """Delete a study, its trials and studyhall's rows for it."""
        _check_name(name)
        study_id = self.storage.study_id(name)
        if study_id is None:
            known = self.study_names()
            raise StudyNotFound(f"no study named {name!r} to delete; known studies: {', '.join(known[:20]) or 'none'}")
        delete_study_rows(self.storage, study_id)
        optuna.delete_study(study_name=name, storage=self.storage.optuna)
