"""The rows of the rate-limit buckets (``studyhall_rate_limits``): locked, handed to a step, written back.

One row per ``(name, bucket)``, its ``tat`` (GCRA's theoretical arrival time) in
the database clock's epoch seconds; the row ``(name, "pause")`` keeps a limiter's
pause: ``paused_until``, and in ``tat`` the total seconds of pause applied so far.

The arithmetic is the caller's (bridge's ``RateLimiter``). ``SqlBuckets.apply``
does one decision in one transaction::

    lock the rows (FOR UPDATE; SQLite: its IMMEDIATE transaction), creating missing ones
    read the database's clock (skewed host clocks cannot break a limit)
    step(BucketRows(now, tats, paused_until, pause_total))  -> the caller's answer
    write back what the step changed; commit

so that every process and host on the database shares the limit, and the state
survives restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from studyhall.storage._schema import rate_limits
from studyhall.storage._sql import db_clock_sql, insert_ignore
from studyhall.storage._storage import Storage

T = TypeVar("T")

PAUSE_BUCKET = "pause"


@dataclass(frozen=True)
class BucketSpec:
    """A bucket as its row records it: its key (e.g. ``requests/60s``), capacity and window."""

    bucket: str
    capacity: float
    period_s: float


@dataclass
class BucketRows:
    """A limiter's rows as read under their lock; a step changes ``tats`` and the pause in place."""

    now: float  # the database's clock, epoch seconds
    tats: dict[str, float]  # bucket -> theoretical arrival time
    paused_until: float
    pause_total: float  # seconds of pause applied so far


class SqlBuckets:
    """The buckets of the limiter ``name`` in a storage, one transaction per decision."""

    def __init__(self, storage: Storage, name: str, specs: Sequence[BucketSpec]) -> None:
        self.storage = storage
        self.name = name
        self.specs = tuple(specs)
        self._clock_sql = db_clock_sql(storage.dialect)

    def apply(self, step: Callable[[BucketRows], T]) -> T:
        """Run ``step`` on the locked rows and write back what it changed; its result."""

        def txn(conn: sa.Connection) -> T:
            rows = self._lock(conn)
            tats, pause = dict(rows.tats), (rows.paused_until, rows.pause_total)
            result = step(rows)
            if rows.tats != tats:
                self._write_tats(conn, rows)
            if (rows.paused_until, rows.pause_total) != pause:
                self._write_pause(conn, rows)
            return result

        return self.storage.transaction(txn)

    def pause_state(self) -> tuple[float, float, float]:
        """``(now, paused_until, pause_total)``, read without locking anything."""
        t = rate_limits

        def read(conn: sa.Connection) -> tuple[float, float, float]:
            row = conn.execute(
                sa.select(t.c.paused_until, t.c.tat).where(t.c.name == self.name, t.c.bucket == PAUSE_BUCKET)
            ).first()
            now = self._now(conn)
            if row is None:
                return now, 0.0, 0.0
            return now, float(row.paused_until), float(row.tat)

        return self.storage.transaction(read, read=True)

    def _now(self, conn: sa.Connection) -> float:
        return float(conn.exec_driver_sql(self._clock_sql).scalar_one())

    def _lock(self, conn: sa.Connection) -> BucketRows:
        t = rate_limits
        query = sa.select(t.c.bucket, t.c.tat, t.c.paused_until).where(t.c.name == self.name).order_by(t.c.bucket)
        # Lock first, read the clock second: waiting for the lock must not age "now".
        rows = conn.execute(query.with_for_update()).all()
        missing = ({s.bucket for s in self.specs} | {PAUSE_BUCKET}) - {r.bucket for r in rows}
        if missing:
            self._create(conn, missing)
            rows = conn.execute(query.with_for_update()).all()
        pause = next(r for r in rows if r.bucket == PAUSE_BUCKET)
        return BucketRows(
            now=self._now(conn),
            tats={r.bucket: float(r.tat) for r in rows if r.bucket != PAUSE_BUCKET},
            paused_until=float(pause.paused_until),
            pause_total=float(pause.tat),
        )

    def _create(self, conn: sa.Connection, buckets: set[str]) -> None:
        now = self._now(conn)
        specs = {s.bucket: s for s in self.specs}
        rows = []
        for b in sorted(buckets):
            spec = specs.get(b)
            rows.append(
                {
                    "name": self.name,
                    "bucket": b,
                    "capacity": spec.capacity if spec else 0.0,
                    "period_s": spec.period_s if spec else 0.0,
                    # A new bucket starts full; the pause row's tat counts pause seconds.
                    "tat": now if spec else 0.0,
                    "paused_until": 0.0,
                    "updated_at": now,
                }
            )
        insert_ignore(conn, rate_limits, rows)

    def _write_tats(self, conn: sa.Connection, rows: BucketRows) -> None:
        t = rate_limits
        stmt = (
            t.update()
            .where(t.c.name == self.name, t.c.bucket == sa.bindparam("b"))
            .values(
                tat=sa.bindparam("v_tat"),
                capacity=sa.bindparam("v_cap"),
                period_s=sa.bindparam("v_per"),
                updated_at=rows.now,
            )
        )
        conn.execute(
            stmt,
            [
                {"b": s.bucket, "v_tat": rows.tats[s.bucket], "v_cap": s.capacity, "v_per": s.period_s}
                for s in self.specs
            ],
        )

    def _write_pause(self, conn: sa.Connection, rows: BucketRows) -> None:
        t = rate_limits
        conn.execute(
            t.update()
            .where(t.c.name == self.name, t.c.bucket == PAUSE_BUCKET)
            .values(paused_until=rows.paused_until, tat=rows.pause_total, updated_at=rows.now)
        )
