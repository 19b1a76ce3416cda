"""The layer rule of DESIGN.md, checked on the source: storage alone speaks SQL and touches Optuna's private storage."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The pytest plugin creates (and drops) a PostgreSQL schema with an admin engine of its own.
PLUGIN = ROOT / "optimizer" / "testing.py"


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if p != PLUGIN)


def _offending(package: str, pattern: str) -> list[str]:
    rx = re.compile(pattern, re.MULTILINE)
    return [str(p.relative_to(ROOT)) for p in _sources(package) if rx.search(p.read_text(encoding="utf-8"))]


def test_the_optimizer_imports_neither_sqlalchemy_nor_optunas_rdb_internals():
    sql = r"^\s*(import sqlalchemy|from sqlalchemy\b|from optuna\.storages\._rdb|import optuna\.storages\._rdb)"
    assert _offending("optimizer", sql) == []


def test_the_optimizer_uses_only_the_bridges_public_names():
    assert _offending("optimizer", r"studyhall\.bridge\._|from studyhall\.bridge import _") == []


def test_storage_imports_neither_bridge_nor_optimizer():
    assert _offending("storage", r"^\s*(from|import) studyhall\.(bridge|optimizer)\b") == []
