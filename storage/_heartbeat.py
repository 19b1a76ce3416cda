"""One daemon thread a process that keeps the trials it runs alive in the database.

Optuna heartbeats only inside ``Study.optimize`` (optuna issues 3215, 3293); a
trial taken with ``ask`` and never told would stay RUNNING forever after its
process died. Every trial studyhall hands out is registered here until it is
told, so a dead process's trials go stale after the grace period.

A process that exits normally (the end of a script, ``sys.exit``) leaves its
untold trials *detached* instead: RUNNING, beaten by nobody, to be told from
another process. Only a process that dies (kill -9, a crash, a signal) leaves
trials to be failed as stale.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import TYPE_CHECKING

from studyhall.storage._errors import StudyhallError
from studyhall.storage._retry import is_transient

if TYPE_CHECKING:
    from studyhall.storage._storage import Storage

_log = logging.getLogger("studyhall.heartbeat")


class Heartbeat:
    """Records a heartbeat for every registered trial each ``storage.heartbeat_interval``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._trials: set[int] = set()
        self._fresh: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int, *, beaten: bool = False) -> None:
        """Keep ``trial_id`` alive until :meth:`discard`; its first beat is written at once.

        ``beaten``: the trial's first beat was written with it (``SQLStorage.commit_trial``).
        """
        with self._lock:
            self._trials.add(trial_id)
            if not beaten:
                self._fresh.add(trial_id)
            if self._thread is None:
                atexit.register(self.detach_all)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="studyhall-heartbeat", daemon=True)
                self._thread.start()
        if not beaten:
            self._wake.set()

    def discard(self, trial_id: int) -> None:
        """Stop beating for ``trial_id`` (it was told, or handed to another owner)."""
        with self._lock:
            self._trials.discard(trial_id)
            self._fresh.discard(trial_id)

    def tracked(self) -> set[int]:
        """The trial ids currently kept alive by this process."""
        with self._lock:
            return set(self._trials)

    def detach_all(self) -> None:
        """Leave every trial still kept alive to be told elsewhere (runs at a normal exit)."""
        with self._lock:
            trials, self._trials, self._fresh = sorted(self._trials), set(), set()
        self.stop()
        if trials:
            try:
                self._storage.optuna.detach_trials(trials)
            except Exception as exc:  # the interpreter is exiting: say so, never raise
                expected = isinstance(exc, StudyhallError) or is_transient(exc)
                _log.warning(
                    "could not detach trials %s (%s); they will be failed as stale", trials, exc, exc_info=not expected
                )

    def close(self) -> None:
        """Stop the thread and forget the trials (the storage is being closed)."""
        with self._lock:
            self._trials.clear()
            self._fresh.clear()
        self.stop()

    def stop(self) -> None:
        """Stop the thread (trials then go stale after the grace period)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self, trial_ids: list[int]) -> None:
        try:
            lost = self._storage.optuna.record_heartbeats(trial_ids)  # one transaction for all of them
        except Exception as exc:  # a missed beat is retried next round; never kill the thread
            # A database out of reach is expected (an outage, a cut link): one line, no traceback.
            expected = isinstance(exc, StudyhallError) or is_transient(exc)
            _log.warning("heartbeat for trials %s failed: %s", trial_ids, exc, exc_info=not expected)
            return
        for trial_id in lost:  # requeued and handed out elsewhere while this process stalled
            _log.warning("trial id %s went to another process while this one stalled; no more beats for it", trial_id)
            self.discard(trial_id)

    def _loop(self) -> None:
        interval = self._storage.heartbeat_interval
        last_full = float("-inf")
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                fresh, self._fresh = self._fresh, set()
                if now - last_full >= interval:
                    due, last_full = set(self._trials), now
                else:
                    due = fresh & self._trials
            if due:
                self._beat(sorted(due))
            self._wake.wait(max(0.0, last_full + interval - time.monotonic()))
