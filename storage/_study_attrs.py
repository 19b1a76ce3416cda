"""One study user attribute of every study in one query (``studyhall studies`` shows each study's selection)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from studyhall.storage._optuna import table
from studyhall.storage._storage import Storage


def study_user_attr_by_name(st: Storage, key: str) -> dict[str, Any]:
    """Study name -> the JSON value of its user attribute ``key``, for the studies that have it."""
    s, a = table("StudyModel"), table("StudyUserAttributeModel")
    query = (
        sa.select(s.c.study_name, a.c.value_json)
        .select_from(s.join(a, a.c.study_id == s.c.study_id))
        .where(a.c.key == key)
    )
    return st.transaction(lambda conn: {name: json.loads(value) for name, value in conn.execute(query)}, read=True)
