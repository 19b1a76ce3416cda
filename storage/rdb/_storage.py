"""SQLStorage: an Optuna storage on Optuna's own tables, at database speed.

Optuna's ``RDBStorage`` goes through the ORM: a trial's creation, each of its
parameters and its end are separate transactions of several statements, and every
``get_all_trials`` re-reads the unfinished trials whole. This storage keeps Optuna's
schema (so the optuna CLI, optuna-dashboard and plain Optuna processes share the
database with it, concurrently) and writes with SQLAlchemy Core:

::

    write  ─> lock the trial's row (FOR UPDATE) ─> the statement(s) ─> commit ─> cache
    read   ─> StudyCache.refresh (one query) ─> trials from memory
    ask    ─> begin_trial (no I/O) ─> the sampler fills it ─> commit_trial: row, params,
              attrs and first heartbeat in ONE transaction (pending.py)
    tell   ─> finish_trial: state, values, attrs and studyhall's rows in ONE transaction

Every write is safe to retry: a retried trial creation finds its own token instead
of creating a second trial, and a retried tell that had committed reports success.

One owner per trial: the process that commits a trial, or claims it from the queue,
writes a fresh owner token with it (system attribute ``studyhall:ask``) and keeps it
in memory. Its every later write to the trial (parameters, intermediate values,
attributes, state, heartbeat) checks the token in the same statement or under the
same row lock; putting the trial back in the queue removes it. So a process that
stalled past the grace period, whose trial another process requeued and handed out
again, gets ``TrialOwnershipLost`` instead of mixing its writes into the new run.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage._errors import StorageError, TrialOwnershipLost
from studyhall.storage._limits import attr_json, check_name
from studyhall.storage._optuna import table
from studyhall.storage._retry import is_transient, retrying
from studyhall.storage._sql import driver_upsert, upsert
from studyhall.storage._sqlite import begun
from studyhall.storage.rdb._cache import StudyCache
from studyhall.storage.rdb._pending import Pending
from studyhall.storage.rdb._rows import (
    Distributions,
    clone,
    intermediate_repr,
    load_trials,
    to_local,
    to_utc,
    value_repr,
)
from studyhall.storage.rdb._statements import OWNER_ATTR, beat_statement, statements

if TYPE_CHECKING:
    import optuna

T = TypeVar("T")
_log = logging.getLogger("studyhall.storage")
_NOT_FOUND = "Record does not exist."
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)
ASK_TOKEN_ATTR = OWNER_ATTR  # the token a retried commit finds its trial by is also its owner's
DETACHED_ATTR = "studyhall:detached"  # outlives its asking process: True, or its lease in seconds


class _Changed(Exception):
    """Rolls a transaction back: the row was not in the state the write expected."""


class TotalReached(Exception):
    """``commit_trial(total=N)`` created nothing: the study already has N trials besides retries."""


class Queued(Exception):
    """``commit_trial(unless_queued=True)`` created nothing: an enqueued (WAITING) trial is to be claimed first."""


_JSON_SCALARS = (float, int, str, bool)


class SQLStorage(BaseStorage, BaseHeartbeat):
    """An ``optuna.storages.BaseStorage`` on Optuna's RDB schema, written with SQLAlchemy Core.

    Get it as ``studyhall.storage.connect(url).optuna``; it shares the Storage's
    engine. Picklable (as its URL). Heartbeats follow Optuna's rules, so Optuna's
    own ``fail_stale_trials`` works on it.
    """

    def __init__(
        self,
        engine: sa.Engine,
        url: str,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("The value of `heartbeat_interval` should be a positive integer.")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("The value of `grace_period` should be a positive integer.")
        self.engine = engine
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        self._lock = threading.RLock()
        self._studies: dict[int, StudyCache] = {}
        self._owner_of: dict[int, int] = {}  # trial id -> study id, for the trials this process owns
        self._tokens: dict[int, str] = {}  # trial id -> owner token (JSON), for the trials it asked or claimed
        self._pending: dict[int, Pending] = {}  # provisional (negative) id -> trial being asked
        self._alias: dict[int, int] = {}  # provisional id -> the id its commit gave it
        self._next_provisional = -1
        self._parse = Distributions()
        self._dialect = engine.dialect.name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reconnect, (self.url, self.heartbeat_interval, self.grace_period))

    def __repr__(self) -> str:
        return f"SQLStorage({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    # ---- transactions ------------------------------------------------------------------

    def _begin(self) -> AbstractContextManager[sa.Connection]:
        return self._transaction(read=False)

    @contextmanager
    def _transaction(self, *, read: bool) -> Iterator[sa.Connection]:
        try:
            with begun(self.engine, read=read) as conn:
                yield conn
        except (sa.exc.IntegrityError, _Changed):
            raise
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise
            raise StorageError(
                f"the database rejected a write to Optuna's tables ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]})"
            ) from exc

    def _txn(
        self,
        fn: Callable[[sa.Connection], T],
        retry: Callable[[sa.Connection], T | None] | None = None,
        *,
        read: bool = False,
    ) -> T:
        """``fn(conn)`` in one transaction, retried on transient errors.

        On a retry, ``retry(conn)`` runs first: if the failed attempt had in fact
        committed, it returns that attempt's result (anything but None) and ``fn``
        does not run again. ``read``: ``fn`` only reads (SQLite need not take the write lock).
        """
        attempts = 0

        def once() -> T:
            nonlocal attempts
            attempts += 1
            with self._transaction(read=True) if read else self._begin() as conn:
                if attempts > 1 and retry is not None:
                    done = retry(conn)
                    if done is not None:
                        return done
                return fn(conn)

        return retrying(once)

    def transaction(self, fn: Callable[[sa.Connection], T]) -> T:
        """``fn(conn)`` in one transaction on this storage's engine, retried on transient errors."""
        return self._txn(fn)

    def _lock_trial(
        self, conn: sa.Connection, trial_id: int, *, states: Container[TrialState] = _UNFINISHED
    ) -> TrialState:
        # FOR UPDATE (a no-op on SQLite, whose IMMEDIATE transactions already exclude
        # writers): nobody finishes the trial between this check and our write.
        q = statements()
        token = self._tokens.get(trial_id)
        if token is None:
            state = conn.execute(q.lock_trial, {"tid": trial_id}).scalar()
        else:
            row = conn.execute(q.lock_owned, {"tid": trial_id}).first()
            state = None if row is None else row[0]
            if row is not None and row[1] != token:
                raise self._lost(trial_id)
        if state is None:
            raise KeyError(_NOT_FOUND)
        if state not in states and state.is_finished():
            number = conn.execute(q.trial_number, {"tid": trial_id}).scalar()
            raise UpdateFinishedTrialError(f"Trial#{number} has already finished and can not be updated.")
        return state  # type: ignore[no-any-return]

    def _lost(self, trial_id: int) -> TrialOwnershipLost:
        """Forget a trial another process took over; the error its stalled writer gets."""
        with self._lock:
            study_id = self._study_of(trial_id)
            cached = None if study_id is None else self._studies[study_id].by_id.get(trial_id)
        # The token stays: every later write from here is refused the same way.
        self._forget(trial_id, keep_token=True)
        which = f"trial {cached.number}" if cached is not None else f"the trial with id {trial_id}"
        grace = self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 0)
        return TrialOwnershipLost(
            f"{which} is no longer this process's: it went without a heartbeat from here for over the "
            f"grace period ({grace}s; this process was stalled or cut off from the database) and another "
            "process put it back in the queue or ran it. Nothing was written; drop this trial and ask for a new one"
        )

    def _lock_study(self, conn: sa.Connection, study_id: int) -> None:
        if conn.execute(statements().lock_study, {"sid": study_id}).first() is None:
            raise KeyError(_NOT_FOUND)

    def _as_stored(self, value: datetime | None) -> datetime | None:
        # Optuna's MySQL schema keeps whole seconds (DATETIME): cache what a reader will see.
        if value is None or self._dialect != "mysql":
            return value
        return value.replace(microsecond=0)

    def _cache(self, study_id: int) -> StudyCache:
        cache = self._studies.get(study_id)
        if cache is None:
            cache = self._studies[study_id] = StudyCache(study_id)
        return cache

    def _resolve(self, trial_id: int) -> int:
        return self._alias.get(trial_id, trial_id)

    # ---- studies -----------------------------------------------------------------------

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        s, d = table("StudyModel"), table("StudyDirectionModel")
        name = study_name if study_name is not None else DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4())
        check_name("study name", name, empty=True)  # Optuna allows an empty name

        def write(conn: sa.Connection) -> int:
            study_id = _new_id(conn.execute(sa.insert(s).values(study_name=name)))
            conn.execute(
                sa.insert(d), [{"study_id": study_id, "objective": i, "direction": x} for i, x in enumerate(directions)]
            )
            return study_id

        def retry(conn: sa.Connection) -> int | None:
            return conn.execute(statements().study_id, {"name": name}).scalar()  # ours, committed

        try:
            study_id = self._txn(write, retry if study_name is None else None)
        except sa.exc.IntegrityError as exc:
            raise DuplicatedStudyError(f"Another study with name '{name}' already exists.") from exc
        with self._lock:
            cache = self._studies[study_id] = StudyCache(study_id)  # an id SQLite reused starts clean
            cache.name, cache.directions = name, list(directions)
        return study_id

    def delete_study(self, study_id: int) -> None:
        t = table("TrialModel")
        trial_ids = sa.select(t.c.trial_id).where(t.c.study_id == study_id).scalar_subquery()

        def write(conn: sa.Connection) -> None:
            self._lock_study(conn, study_id)
            for model in (
                "TrialParamModel",
                "TrialValueModel",
                "TrialIntermediateValueModel",
                "TrialUserAttributeModel",
                "TrialSystemAttributeModel",
                "TrialHeartbeatModel",
            ):
                child = table(model)
                conn.execute(sa.delete(child).where(child.c.trial_id.in_(trial_ids)))
            conn.execute(sa.delete(t).where(t.c.study_id == study_id))
            for model in ("StudyDirectionModel", "StudyUserAttributeModel", "StudySystemAttributeModel", "StudyModel"):
                tbl = table(model)
                conn.execute(sa.delete(tbl).where(tbl.c.study_id == study_id))

        self._txn(write)
        with self._lock:
            cache = self._studies.pop(study_id, None)
            if cache is not None:
                for trial_id in cache.by_id:
                    self._owner_of.pop(trial_id, None)
                    self._tokens.pop(trial_id, None)

    def _set_study_attr(self, model: str, study_id: int, key: str, value: Any) -> None:
        row = [{"study_id": study_id, "key": key, "value_json": attr_json("study attribute", key, value)}]

        def write(conn: sa.Connection) -> None:
            self._lock_study(conn, study_id)
            upsert(conn, table(model), row, keys=("study_id", "key"))

        self._txn(write)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("StudyUserAttributeModel", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("StudySystemAttributeModel", study_id, key, value)

    def _study_attrs(self, model: str, study_id: int) -> dict[str, Any]:
        s, a = table("StudyModel"), table(model)
        query = (
            sa.select(s.c.study_id, a.c.key, a.c.value_json)
            .select_from(s.outerjoin(a, a.c.study_id == s.c.study_id))
            .where(s.c.study_id == study_id)
        )
        rows = self._txn(lambda conn: conn.execute(query).all(), read=True)
        if not rows:
            raise KeyError(_NOT_FOUND)
        return {key: json.loads(text) for _, key, text in rows if key is not None}

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("StudyUserAttributeModel", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("StudySystemAttributeModel", study_id)

    def get_study_id_from_name(self, study_name: str) -> int:
        study_id = self._txn(lambda conn: conn.execute(statements().study_id, {"name": study_name}).scalar(), read=True)
        if study_id is None:
            raise KeyError(_NOT_FOUND)
        return int(study_id)

    def get_study_name_from_id(self, study_id: int) -> str:
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is not None and cache.name is not None:
                return cache.name
        name = self._txn(lambda conn: conn.execute(statements().study_name, {"sid": study_id}).scalar(), read=True)
        if name is None:
            raise KeyError(_NOT_FOUND)
        with self._lock:
            self._cache(study_id).name = name
        return str(name)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is not None and cache.directions is not None:
                return list(cache.directions)
        rows = self._txn(
            lambda conn: conn.execute(statements().directions, {"sid": study_id}).scalars().all(), read=True
        )
        if not rows:
            raise KeyError(_NOT_FOUND)
        with self._lock:
            self._cache(study_id).directions = list(rows)
        return list(rows)

    def get_all_studies(self) -> list[FrozenStudy]:
        s, d = table("StudyModel"), table("StudyDirectionModel")
        ua, sa_ = table("StudyUserAttributeModel"), table("StudySystemAttributeModel")

        def read(conn: sa.Connection) -> list[FrozenStudy]:
            names = conn.execute(sa.select(s.c.study_id, s.c.study_name).order_by(s.c.study_id)).all()
            directions: dict[int, list[StudyDirection]] = {}
            for study_id, direction in conn.execute(
                sa.select(d.c.study_id, d.c.direction).order_by(d.c.study_id, d.c.objective)
            ):
                directions.setdefault(study_id, []).append(direction)
            attrs: list[dict[int, dict[str, Any]]] = [{}, {}]
            for i, tbl in enumerate((ua, sa_)):
                for study_id, key, text in conn.execute(sa.select(tbl.c.study_id, tbl.c.key, tbl.c.value_json)):
                    attrs[i].setdefault(study_id, {})[key] = json.loads(text)
            return [
                FrozenStudy(
                    study_name=name,
                    direction=None,
                    directions=directions.get(study_id, []),
                    user_attrs=attrs[0].get(study_id, {}),
                    system_attrs=attrs[1].get(study_id, {}),
                    study_id=study_id,
                )
                for study_id, name in names
            ]

        return self._txn(read, read=True)

    # ---- creating trials ---------------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        pending = Pending.from_template(study_id, template_trial)
        return self._insert(pending, token=None)._trial_id

    def _insert(
        self,
        pending: Pending,
        token: str | None,
        heartbeat: bool = False,
        total: int | None = None,
        extra: Callable[[sa.Connection, int], None] | None = None,
        unless_queued: bool = False,
    ) -> FrozenTrial:
        """Write a whole new trial (row, values, params, attrs, intermediates) in one transaction."""
        q = statements()
        if token is not None:
            pending.system_attrs[ASK_TOKEN_ATTR] = token
        row = {
            "study_id": pending.study_id,
            "state": pending.state,
            "datetime_start": to_utc(pending.datetime_start),
            "datetime_complete": to_utc(pending.datetime_complete),
        }

        def write(conn: sa.Connection) -> FrozenTrial:
            # Every process creating a trial locks the study's row first (Optuna too), so
            # numbers are unique and trial ids commit in order within a study.
            self._lock_study(conn, pending.study_id)
            # A queued trial goes first, even past a total: asked here rather than in a
            # transaction of its own before the sampling, as it is nearly always empty.
            if unless_queued and conn.execute(q.waiting_any, {"sid": pending.study_id}).first() is not None:
                raise Queued
            # Under the study's lock: of hosts asking at once, exactly the total get a trial.
            if (
                total is not None
                and conn.execute(q.count_first_attempts, {"sid": pending.study_id}).scalar_one() >= total
            ):
                raise TotalReached
            number = conn.execute(q.count_trials, {"sid": pending.study_id}).scalar_one()
            trial_id = _new_id(conn.execute(q.insert_trial, {**row, "number": number}))
            pending.write_children(conn, trial_id)
            if heartbeat:
                conn.execute(q.first_beat, {"tid": trial_id})
            if extra is not None:
                extra(conn, trial_id)
            return pending.frozen(trial_id, number)

        def retry(conn: sa.Connection) -> FrozenTrial | None:
            # A dropped connection can hide a commit: find the trial by the token it carries.
            if token is None:
                return None
            found = conn.execute(
                q.find_token, {"sid": pending.study_id, "key": ASK_TOKEN_ATTR, "value": json.dumps(token)}
            ).first()
            return None if found is None else pending.frozen(found[0], found[1])

        frozen = self._txn(write, retry)
        frozen.datetime_start = self._as_stored(frozen.datetime_start)
        frozen.datetime_complete = self._as_stored(frozen.datetime_complete)
        with self._lock:
            cache = self._cache(pending.study_id)
            cache.put(frozen)
            if frozen.state == TrialState.RUNNING:  # WAITING ones are anyone's to take
                self._owner_of[frozen._trial_id] = pending.study_id
                if token is not None:
                    self._tokens[frozen._trial_id] = json.dumps(token)
        return frozen

    def begin_trial(self, study_id: int) -> int:
        """A provisional (negative) trial id for a trial that exists only here until ``commit_trial``.

        Optuna's ``Trial`` and sampler work on it as on any trial; its parameters and
        attributes wait in memory, and ``commit_trial`` writes them all at once.
        """
        with self._lock:
            cache = self._cache(study_id)
            provisional = self._next_provisional
            self._next_provisional -= 1
            expected = (max(cache.id_of_number) + 1) if cache.id_of_number else 0
            self._pending[provisional] = Pending.new(study_id, provisional, expected)
        return provisional

    def commit_trial(
        self,
        provisional: int,
        *,
        heartbeat: bool = True,
        total: int | None = None,
        extra: Callable[[sa.Connection, int], None] | None = None,
        unless_queued: bool = False,
    ) -> FrozenTrial:
        """Write the trial begun as ``provisional`` in one transaction; its id from now on is the real one.

        Safe to retry after a dropped connection: the trial carries a token, so a
        commit that went through unseen is found, not repeated. The token also makes
        this process the trial's owner (fenced writes, see the module's docstring).
        ``total``: raise ``TotalReached`` instead if the study already has that many
        trials besides retries (checked under the study's lock, so exact across hosts).
        ``extra(conn, trial_id)`` runs in the same transaction (the HTTP service's lease);
        an exception from it writes nothing. ``unless_queued``: raise ``Queued`` instead if
        the study has an enqueued (WAITING) trial, which ``pop_waiting_trial`` then claims.
        """
        with self._lock:
            pending = self._pending.pop(provisional)
        token = uuid.uuid4().hex
        frozen = self._insert(
            pending, token, heartbeat=heartbeat, total=total, extra=extra, unless_queued=unless_queued
        )
        with self._lock:
            self._alias[provisional] = frozen._trial_id
        return frozen

    def discard_trial(self, provisional: int) -> None:
        """Forget a begun trial that will not be committed (its sampling failed)."""
        with self._lock:
            self._pending.pop(provisional, None)

    def pop_waiting_trial(self, study_id: int) -> int | None:
        """Claim the oldest WAITING trial (RUNNING from now on); None when the queue is empty.

        One small read of the queue's head (usually empty: no trial is read), then one
        conditional UPDATE per candidate; another process may claim it first.
        """
        q = statements()
        with self._lock:
            known = study_id in self._studies

        def head(conn: sa.Connection) -> list[int]:
            ids = [row[0] for row in conn.execute(q.waiting_head, {"sid": study_id})]
            if not ids and not known:  # an empty queue, or no such study?
                self._check_study_exists(conn, study_id)
            return ids

        while True:
            ids = self._txn(head, read=True)
            if not ids:
                return None
            for trial_id in ids:
                try:
                    if self.set_trial_state_values(trial_id, TrialState.RUNNING):
                        return trial_id
                except UpdateFinishedTrialError:
                    continue
            # every one was claimed by another process meanwhile: look at the queue again

    # ---- writing trials ----------------------------------------------------------------

    def _write_trial(
        self, trial_id: int, write: Callable[[sa.Connection], None], apply: Callable[[FrozenTrial], None]
    ) -> None:
        """Lock ``trial_id``, run ``write``, then ``apply`` the change to the cached trial."""
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                apply(pending.trial)
                return
        trial_id = self._resolve(trial_id)

        def txn(conn: sa.Connection) -> None:
            self._lock_trial(conn, trial_id)
            write(conn)

        self._txn(txn)
        self._update_cached(trial_id, apply)

    def _update_cached(self, trial_id: int, change: Callable[[FrozenTrial], None]) -> None:
        # Copy on write: a FrozenTrial handed out earlier (get_all_trials) must not change.
        with self._lock:
            study_id = self._study_of(trial_id)
            cache = None if study_id is None else self._studies[study_id]
            cached = None if cache is None else cache.by_id.get(trial_id)
            if cache is not None and cached is not None:
                fresh = clone(cached)
                change(fresh)
                cache.put(fresh)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        check_name("parameter name", param_name)
        q = statements()
        row = {
            "param_name": param_name,
            "param_value": param_value_internal,
            "distribution_json": distribution_to_json(distribution),
        }
        with self._lock:
            study_id = self._study_of(trial_id)
            known = self._studies[study_id].distributions.get(param_name) if study_id is not None else None

        def write(conn: sa.Connection) -> None:
            # After the trial's state was checked (Optuna checks the state first).
            previous = known or self._first_distribution(conn, self._resolve(trial_id), param_name)
            if previous is not None:
                check_distribution_compatibility(previous, distribution)
            tid = self._resolve(trial_id)
            if conn.execute(q.param_exists, {"tid": tid, "name": param_name}).first() is None:
                conn.execute(q.insert_param, {"trial_id": tid, **row})  # as Optuna: set once, later sets ignored

        def apply(frozen: FrozenTrial) -> None:
            if frozen._trial_id < 0 and known is not None:  # a trial being asked: checked here
                check_distribution_compatibility(known, distribution)
            if param_name not in frozen.params:
                frozen.distributions[param_name] = distribution
                frozen.params[param_name] = distribution.to_external_repr(param_value_internal)
            if study_id is not None:
                self._studies[study_id].distributions.setdefault(param_name, distribution)

        self._write_trial(trial_id, write, apply)

    def _study_of(self, trial_id: int) -> int | None:
        pending = self._pending.get(trial_id)
        if pending is not None:
            return pending.study_id
        trial_id = self._resolve(trial_id)
        study_id = self._owner_of.get(trial_id)
        if study_id is not None:
            return study_id
        for sid, cache in self._studies.items():
            if trial_id in cache.by_id:
                return sid
        return None

    def _first_distribution(self, conn: sa.Connection, trial_id: int, name: str) -> BaseDistribution | None:
        text = conn.execute(statements().first_distribution, {"tid": trial_id, "name": name}).scalar()
        return None if text is None else self._parse(text)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with self._lock:
            if trial_id in self._pending:
                raise UpdateFinishedTrialError("a trial being asked is told only after its commit")
        trial_id = self._resolve(trial_id)
        now = datetime.now()
        times: dict[str, Any] = {}
        if state == TrialState.RUNNING:
            times["datetime_start"] = to_utc(now)
        if state.is_finished():
            times["datetime_complete"] = to_utc(now)
        expected = (TrialState.WAITING,) if state == TrialState.RUNNING else _UNFINISHED
        token = None
        if state == TrialState.RUNNING:  # a claim from the queue: whatever this process held before is void
            token = json.dumps(uuid.uuid4().hex)
            with self._lock:
                self._tokens.pop(trial_id, None)

        def write(conn: sa.Connection) -> bool:
            current = self._lock_trial(conn, trial_id)
            if current not in expected:
                return False
            conn.execute(statements().set_trial, {"tid": trial_id, "state": state, **times})
            if token is not None:
                owner = [{"trial_id": trial_id, "key": OWNER_ATTR, "value_json": token}]
                upsert(conn, table("TrialSystemAttributeModel"), owner, keys=("trial_id", "key"))
            if values is not None:
                rows = [
                    {"trial_id": trial_id, "objective": i, "value": x, "value_type": k}
                    for i, (x, k) in enumerate(map(value_repr, values))
                ]
                upsert(conn, table("TrialValueModel"), rows, keys=("trial_id", "objective"))
            return True

        changed = self._txn(write)
        if changed:
            if token is not None:
                with self._lock:
                    self._tokens[trial_id] = token
                self._update_cached(
                    trial_id, lambda frozen: frozen.system_attrs.update({OWNER_ATTR: json.loads(token)})
                )
            self._after_state_change(trial_id, state, values, times)
        return changed

    def _after_state_change(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None, times: dict[str, Any]
    ) -> None:
        def change(frozen: FrozenTrial) -> None:
            if values is not None:
                frozen.values = list(values)
            if "datetime_start" in times:
                frozen.datetime_start = self._as_stored(to_local(times["datetime_start"]))
            if "datetime_complete" in times:
                frozen.datetime_complete = self._as_stored(to_local(times["datetime_complete"]))
            frozen.state = state

        self._update_cached(trial_id, change)
        with self._lock:
            study_id = self._study_of(trial_id)
            if state == TrialState.RUNNING and study_id is not None:
                self._owner_of[trial_id] = study_id
            elif state.is_finished():
                self._owner_of.pop(trial_id, None)
                self._tokens.pop(trial_id, None)

    def finish_trial(
        self,
        trial_id: int,
        state: TrialState,
        values: Sequence[float] | None = None,
        *,
        user_attrs: dict[str, Any] | None = None,
        extra: Callable[[sa.Connection], None] | None = None,
        completed_at: datetime | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        """End a RUNNING trial: state, values, ``user_attrs`` and ``extra(conn)`` in one transaction.

        Returns False, having written nothing, when the trial was no longer RUNNING
        (told or failed elsewhere). A retry after a dropped connection that finds this
        very write committed returns True. ``started_at`` replaces the start time (a
        trial that waited in a queue after its ask).
        """
        trial_id = self._resolve(trial_id)
        q = statements()
        times = {"datetime_complete": to_utc(completed_at or datetime.now())}
        if started_at is not None:
            times["datetime_start"] = to_utc(started_at)
        end: dict[str, Any] = {"tid": trial_id, "state": state, **times}
        value_rows = [
            {"trial_id": trial_id, "objective": i, "value": x, "value_type": k}
            for i, (x, k) in enumerate(map(value_repr, values or ()))
        ]
        attrs = dict(user_attrs or {})
        texts = {k: attr_json("user attribute", k, v) for k, v in attrs.items()}
        attr_rows = [{"trial_id": trial_id, "key": k, "value_json": text} for k, text in texts.items()]
        token = self._tokens.get(trial_id)
        finish = q.finish_running if token is None else q.finish_owned
        if token is not None:
            end["owner"] = token

        def write(conn: sa.Connection) -> bool:
            # The owner's check rides in the UPDATE itself: no extra round trip on the hot path.
            if conn.execute(finish, end).rowcount != 1:
                if token is not None:
                    self._lock_trial(conn, trial_id, states=tuple(TrialState))  # TrialOwnershipLost if it changed hands
                raise _Changed
            upsert(conn, table("TrialValueModel"), value_rows, keys=("trial_id", "objective"))
            driver_upsert(conn, table("TrialUserAttributeModel"), attr_rows, keys=("trial_id", "key"))
            if extra is not None:
                extra(conn)
            return True

        def retry(conn: sa.Connection) -> bool | None:
            # Did the attempt that lost its connection commit? Then the row carries our end.
            row = conn.execute(q.state_and_end, {"tid": trial_id}).first()
            if row is None or row[0] != state or row[1] is None:
                return None
            return abs((row[1] - times["datetime_complete"]).total_seconds()) < 1.0 or None

        try:
            self._txn(write, retry)
        except _Changed:
            self._forget(trial_id)
            return False
        # as a reader would get them back (JSON's scalars are themselves)
        stored_attrs = {
            k: v if v is None or v.__class__ in _JSON_SCALARS else json.loads(texts[k]) for k, v in attrs.items()
        }
        self._update_cached(trial_id, lambda frozen: frozen.user_attrs.update(stored_attrs))
        self._after_state_change(trial_id, state, values, times)
        return True

    def requeue_trial(self, trial_id: int) -> bool:
        """Put a RUNNING trial that never began back in the queue (WAITING); False if it is not RUNNING.

        Its owner token goes, so the process that held it can write to it no more. This
        process's own trial goes back only if it still owns it; another process's (a stale
        one) only if it has no parameter yet (it never began).
        """
        trial_id = self._resolve(trial_id)
        q = statements()
        with self._lock:
            token = self._tokens.pop(trial_id, None)
        requeue, args = (
            (q.requeue_unbegun, {"tid": trial_id})
            if token is None
            else (q.requeue_owned, {"tid": trial_id, "owner": token})
        )

        def write(conn: sa.Connection) -> bool:
            if conn.execute(requeue, args).rowcount != 1:
                return False
            conn.execute(q.drop_owner, {"tid": trial_id})
            # An old beat would make the trial look stale the moment it is handed out again.
            conn.execute(q.drop_beat, {"tid": trial_id})
            return True

        if not self._txn(write):
            self._forget(trial_id)
            return False

        def waiting(frozen: FrozenTrial) -> None:
            frozen.state, frozen.datetime_start = TrialState.WAITING, None
            frozen.system_attrs.pop(OWNER_ATTR, None)

        self._update_cached(trial_id, waiting)
        with self._lock:
            self._owner_of.pop(trial_id, None)  # anyone's to take now
        return True

    def _forget(self, trial_id: int, *, keep_token: bool = False) -> None:
        # The trial changed under us (another process ended it): read it again when asked.
        with self._lock:
            if not keep_token:
                self._tokens.pop(trial_id, None)
            study_id = self._owner_of.pop(trial_id, None) or self._study_of(trial_id)
            if study_id is not None:
                self._studies[study_id].drop(trial_id)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        stored, kind = intermediate_repr(intermediate_value)
        row = {"step": step, "intermediate_value": stored, "intermediate_value_type": kind}

        def write(conn: sa.Connection) -> None:
            upsert(
                conn,
                table("TrialIntermediateValueModel"),
                [{"trial_id": self._resolve(trial_id), **row}],
                keys=("trial_id", "step"),
            )

        def apply(frozen: FrozenTrial) -> None:
            frozen.intermediate_values[step] = intermediate_value

        self._write_trial(trial_id, write, apply)

    def _set_trial_attr(self, model: str, trial_id: int, key: str, value: Any) -> None:
        text = attr_json("user attribute" if model == "TrialUserAttributeModel" else "system attribute", key, value)

        def write(conn: sa.Connection) -> None:
            upsert(
                conn,
                table(model),
                [{"trial_id": self._resolve(trial_id), "key": key, "value_json": text}],
                keys=("trial_id", "key"),
            )

        def apply(frozen: FrozenTrial) -> None:
            attrs = frozen.user_attrs if model == "TrialUserAttributeModel" else frozen.system_attrs
            attrs[key] = json.loads(text)

        self._write_trial(trial_id, write, apply)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attr("TrialUserAttributeModel", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attr("TrialSystemAttributeModel", trial_id, key, value)

    # ---- reading trials ----------------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                return pending.trial
            trial_id = self._resolve(trial_id)
            study_id = self._study_of(trial_id)
            cached = None if study_id is None else self._studies[study_id].by_id.get(trial_id)
            # Finished trials never change; our own running ones change only through us.
            if cached is not None and cached.state.is_finished():
                return cached
            if cached is not None and trial_id in self._owner_of:
                return clone(cached)  # optuna.Trial writes into the trial it reads
        trials = self._txn(lambda conn: load_trials(conn, self._parse, ids=[trial_id]), read=True)
        if not trials:
            raise KeyError(_NOT_FOUND)
        return trials[0]

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        with self._lock:
            cache = self._cache(study_id)

            def refresh(conn: sa.Connection) -> None:
                for trial_id in cache.refresh(conn, self._parse, self._owner_of.keys()):
                    self._owner_of.pop(trial_id, None)  # the study was deleted: its trials are no one's
                    self._tokens.pop(trial_id, None)
                if not cache.by_id:  # no trial (any more): say so if there is no such study
                    self._check_study_exists(conn, study_id)

            self._txn(refresh, read=True)
            trials = cache.trials(states if states is None else [s for s in TrialState if s in states])
        return copy.deepcopy(trials) if deepcopy else trials

    def _check_study_exists(self, conn: sa.Connection, study_id: int) -> None:
        if conn.execute(statements().study_exists, {"sid": study_id}).first() is None:
            raise KeyError(_NOT_FOUND)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is not None and trial_number in cache.id_of_number:
                return cache.id_of_number[trial_number]
        t = table("TrialModel")
        trial_id = self._txn(
            lambda conn: conn.execute(
                sa.select(t.c.trial_id).where(t.c.study_id == study_id, t.c.number == trial_number)
            ).scalar(),
            read=True,
        )
        if trial_id is None:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with study_id {study_id}.")
        return int(trial_id)

    # ---- heartbeats (Optuna's BaseHeartbeat) -------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        self.record_heartbeats([trial_id])

    def record_heartbeats(self, trial_ids: Sequence[int]) -> list[int]:
        """Beat for several trials in one transaction (the heartbeat thread's round).

        Returns the trials this process no longer owns (another process took them over
        while this one stalled); they get no beat, and their writes will be refused.
        """
        if not trial_ids:
            return []
        beat, q = beat_statement(self._dialect), statements()
        ids = [self._resolve(i) for i in trial_ids]
        with self._lock:
            held = {i: self._tokens[i] for i in ids if i in self._tokens}

        def write(conn: sa.Connection) -> list[int]:
            lost: list[int] = []
            if held:
                owners = dict(conn.execute(q.owners, {"ids": sorted(held)}).all())
                lost = [i for i, token in held.items() if owners.get(i) != token]
            rows = [{"tid": i} for i in ids if i not in lost]
            if rows:
                conn.execute(beat, rows)
            return lost

        lost = self._txn(write)
        for trial_id in lost:
            self._lost(trial_id)
        return lost

    def detach_trials(self, trial_ids: Sequence[int], lease_s: float | None = None) -> None:
        """Let trials outlive this process: no heartbeat from here, told later from anywhere.

        Without ``lease_s`` the trials stay RUNNING until told (no stale check fails them);
        with it, their heartbeat is dated ``lease_s`` ahead, so they go stale a grace
        period after the lease ends unless told first.
        """
        if not trial_ids:
            return
        hb = table("TrialHeartbeatModel")
        ids = [self._resolve(i) for i in trial_ids]
        marker = attr_json("system attribute", DETACHED_ATTR, lease_s if lease_s is not None else True)

        def write(conn: sa.Connection) -> None:
            conn.execute(sa.delete(hb).where(hb.c.trial_id.in_(ids)))
            if lease_s is not None:
                now = conn.execute(statements().db_now).scalar_one()
                until = _naive(now) + timedelta(seconds=lease_s)
                conn.execute(sa.insert(hb), [{"trial_id": i, "heartbeat": until} for i in ids])
            upsert(
                conn,
                table("TrialSystemAttributeModel"),
                [{"trial_id": i, "key": DETACHED_ATTR, "value_json": marker} for i in ids],
                keys=("trial_id", "key"),
            )

        self._txn(write)
        with self._lock:
            for i in ids:
                self._owner_of.pop(i, None)  # changes from elsewhere from now on
                self._tokens.pop(i, None)  # and anyone may tell them

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        q = statements()

        def read(conn: sa.Connection) -> list[int]:
            now = _naive(conn.execute(q.db_now).scalar_one())
            rows = conn.execute(q.running_beats, {"sid": study_id})
            return [trial_id for trial_id, beat in rows if (now - beat).total_seconds() > grace]

        return self._txn(read, read=True)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def _naive(now: Any) -> datetime:
    # The database clock as the heartbeat column holds it: naive, in the session's zone.
    return now.replace(tzinfo=None) if isinstance(now, datetime) else datetime.fromisoformat(str(now))


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _reconnect(url: str, heartbeat_interval: int | None, grace_period: int | None) -> SQLStorage:
    from studyhall.storage._storage import connect

    kwargs: dict[str, int] = {}
    if heartbeat_interval is not None:
        kwargs["heartbeat_interval"] = heartbeat_interval
    if grace_period is not None:
        kwargs["grace_period"] = grace_period
    return connect(url, **kwargs).optuna
