"""The rows of the LLM response cache (``studyhall_llm_cache``): one answer per request key.

bridge's ``LLMClient`` decides what is cached and computes the key; this module
only reads and writes the rows, so that every process and host on the database
shares the answers.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from studyhall.storage._schema import llm_cache
from studyhall.storage._sql import insert_ignore
from studyhall.storage._storage import Storage


def cached_response(st: Storage, key: str) -> dict[str, Any] | None:
    """The answer stored under ``key``, or None."""

    def read(conn: sa.Connection) -> dict[str, Any] | None:
        row = conn.execute(sa.select(llm_cache.c.response).where(llm_cache.c.key == key)).first()
        return None if row is None else dict(row.response)

    return st.transaction(read, read=True)


def cache_response(st: Storage, key: str, model: str, response: dict[str, Any]) -> None:
    """Store ``response`` under ``key``; the first answer stored for a key stays."""
    row = {"key": key, "model": model[:255], "response": response, "created_at": time.time()}
    st.transaction(lambda conn: insert_ignore(conn, llm_cache, [row]))
