"""The rate-limit bucket rows and the LLM cache rows: storage's side, without bridge's arithmetic."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from studyhall.storage import tables
from studyhall.storage._buckets import BucketRows, BucketSpec, SqlBuckets
from studyhall.storage._llm_cache import cache_response, cached_response

SPECS = [BucketSpec("requests/60s", 10.0, 60.0), BucketSpec("tokens/60s", 1000.0, 60.0)]


def rows_of(store, name):
    t = tables.rate_limits
    query = sa.select(t.c.bucket, t.c.tat, t.c.paused_until, t.c.updated_at).where(t.c.name == name)
    return {r.bucket: r for r in store.transaction(lambda c: c.execute(query).all())}


def test_missing_rows_are_created_full_at_the_database_clock(store):
    name = f"lim-{uuid.uuid4().hex[:8]}"
    seen = SqlBuckets(store, name, SPECS).apply(lambda rows: rows)
    assert set(seen.tats) == {"requests/60s", "tokens/60s"}
    assert all(0 <= seen.now - tat < 5 for tat in seen.tats.values())  # a new bucket starts full
    assert (seen.paused_until, seen.pause_total) == (0.0, 0.0)
    assert abs(seen.now - store.now()) < 5
    assert set(rows_of(store, name)) == {"requests/60s", "tokens/60s", "pause"}


def test_a_step_writes_back_only_what_it_changed(store):
    name = f"lim-{uuid.uuid4().hex[:8]}"
    buckets = SqlBuckets(store, name, SPECS)
    buckets.apply(lambda rows: None)
    before = rows_of(store, name)

    def book(rows: BucketRows) -> str:
        rows.tats["requests/60s"] = rows.now + 6.0
        return "booked"

    assert buckets.apply(book) == "booked"
    after = rows_of(store, name)
    assert after["requests/60s"].tat > before["requests/60s"].tat
    assert after["pause"] == before["pause"]  # the pause row was not touched

    def pause(rows: BucketRows) -> None:
        rows.paused_until, rows.pause_total = rows.now + 2.0, 2.0

    buckets.apply(pause)
    now, until, total = buckets.pause_state()
    assert total == 2.0 and 0 < until - now <= 2.0
    assert rows_of(store, name)["pause"].tat == 2.0


def test_llm_cache_keeps_the_first_answer(store):
    key = uuid.uuid4().hex
    assert cached_response(store, key) is None
    cache_response(store, key, "m", {"text": "first"})
    cache_response(store, key, "m", {"text": "second"})
    assert cached_response(store, key) == {"text": "first"}
