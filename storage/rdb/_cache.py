"""What one process knows of a study's trials, kept coherent with one small query.

Finished trials never change, so they are read once. Each refresh asks the
database for the trials newer than the newest one seen (the watermark) and for the
state and parameter count of the unfinished ones; only trials that are new or
changed are then read whole. A study's trial ids grow in commit order (every
process creating a trial locks the study's row first, Optuna included), so nothing
committed below the watermark can appear later. Only what a refresh read moves the
watermark: a trial this process creates may have an id above another process's
trial committed since the last refresh, which must still be read.

SQLite gives a deleted study's id, and its trials' ids, to the next ones created, so
a study deleted and created again by another process looks like the same study
here. Each refresh therefore also reads back one finished trial (the anchor: the
oldest this process saw finish; finished trials never change): gone, or ended at
another moment, and the study is another one: everything is read again.

::

    refresh ─> SELECT id, state, n_params WHERE id > watermark OR id IN unfinished
           └─> changed or new ids ─> load_trials (six queries, only when something changed)
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable

import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage.rdb._rows import Distributions, load_trials
from studyhall.storage.rdb._statements import statements

# Past this many unfinished trials, ask for them by state rather than by id list.
_MAX_IDS_IN_QUERY = 500


class StudyCache:
    """One study's trials as this process last saw them, in number order."""

    def __init__(self, study_id: int) -> None:
        self.study_id = study_id
        self._clear()

    def _clear(self) -> None:
        self.name: str | None = None
        self.directions: list[StudyDirection] | None = None
        self.by_id: dict[int, FrozenTrial] = {}
        self.id_of_number: dict[int, int] = {}
        self._numbers: list[int] = []  # sorted trial numbers
        self._ordered: list[FrozenTrial] = []  # trials in number order
        self.watermark = -1
        self.unfinished: set[int] = set()
        # The first distribution stored for each parameter name: new ones must be compatible.
        self.distributions: dict[str, BaseDistribution] = {}
        # The oldest finished trial seen, and its datetime_complete as the database returns it
        # (None until a refresh has read it): how a study deleted and created again is noticed.
        self.anchor = -1
        self.anchor_complete: object = None

    def put(self, frozen: FrozenTrial) -> None:
        """Add or replace a trial."""
        trial_id = frozen._trial_id
        old = self.by_id.get(trial_id)
        self.by_id[trial_id] = frozen
        if old is not None and old.number == frozen.number:
            self._ordered[bisect.bisect_left(self._numbers, frozen.number)] = frozen
        else:
            if old is not None:  # renumbered (never in practice): drop the old place
                i = bisect.bisect_left(self._numbers, old.number)
                del self._numbers[i], self._ordered[i]
            i = bisect.bisect_left(self._numbers, frozen.number)
            self._numbers.insert(i, frozen.number)
            self._ordered.insert(i, frozen)
        self.id_of_number[frozen.number] = trial_id
        if frozen.state.is_finished():
            self.unfinished.discard(trial_id)
            if self.anchor < 0 or trial_id < self.anchor:
                self.anchor, self.anchor_complete = trial_id, None
        else:
            self.unfinished.add(trial_id)
        for name, dist in frozen.distributions.items():
            self.distributions.setdefault(name, dist)

    def drop(self, trial_id: int) -> None:
        """Forget a trial that changed under us; the next refresh reads it again."""
        frozen = self.by_id.pop(trial_id, None)
        if frozen is not None:
            i = bisect.bisect_left(self._numbers, frozen.number)
            if i < len(self._numbers) and self._ordered[i] is frozen:
                del self._numbers[i], self._ordered[i]
            self.id_of_number.pop(frozen.number, None)
        self.unfinished.add(trial_id)

    def trials(self, states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        """The trials in number order, optionally only those in ``states``."""
        if states is None:
            return list(self._ordered)
        wanted = set(states)
        return [t for t in self._ordered if t.state in wanted]

    def refresh(self, conn: sa.Connection, parse: Distributions, owned: Container[int]) -> list[int]:
        """Bring the cache up to date: one query, plus reads of whatever is new or changed.

        ``owned`` trials are written through this process's cache; they are re-read
        only when their state changed under us (another process failed them). Returns
        the ids of the trials forgotten because the study was deleted (and perhaps
        created again) meanwhile, else nothing.
        """
        if not self.by_id:  # cold: everything, in six queries
            for frozen in load_trials(conn, parse, study_id=self.study_id):
                self.put(frozen)
                self.watermark = max(self.watermark, frozen._trial_id)
            return []
        q = statements()
        args: dict[str, object] = {"sid": self.study_id, "watermark": self.watermark, "anchor": self.anchor}
        if not self.unfinished:
            query = q.refresh_newer
        elif len(self.unfinished) <= _MAX_IDS_IN_QUERY:
            query, args["ids"] = q.refresh_with_ids, sorted(self.unfinished)
        else:
            query = q.refresh_with_states
        stale: list[int] = []
        newest = self.watermark
        anchored = self.anchor < 0
        for trial_id, state, count, completed in conn.execute(query, args):
            if trial_id == self.anchor:
                if self.anchor_complete is None:
                    self.anchor_complete = completed
                anchored = completed == self.anchor_complete
            newest = max(newest, trial_id)
            known = self.by_id.get(trial_id)
            if known is None or known.state != state or (trial_id not in owned and len(known.params) != count):
                stale.append(trial_id)
        if not anchored:  # not the study this cache knew: read the one there is now, if any
            forgotten = list(self.by_id)
            self._clear()
            self.refresh(conn, parse, ())
            return forgotten
        if stale:
            for frozen in load_trials(conn, parse, ids=stale):
                self.put(frozen)
        self.watermark = newest
        return []
