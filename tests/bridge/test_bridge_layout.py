"""bridge's place in the layers: it speaks no SQL, touches no Optuna, imports nothing above it,
and loads no module by file path."""

from __future__ import annotations

import ast
from pathlib import Path

import studyhall.bridge

BRIDGE = Path(studyhall.bridge.__file__).resolve().parent
# The only storage modules bridge may use besides the public package: the rows it
# hands its arithmetic to.
STORAGE_MODULES = {"studyhall.storage", "studyhall.storage._buckets", "studyhall.storage._llm_cache"}


def imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_bridge_imports_no_sql_no_optuna_and_nothing_above_it() -> None:
    modules = sorted(BRIDGE.rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        for name in imports(path):
            where = f"{path.relative_to(BRIDGE)} imports {name}"
            assert name.split(".")[0] not in ("sqlalchemy", "optuna", "alembic"), where
            assert not name.startswith(("studyhall.optimizer", "optimizer", "storage", "bridge")), where
            if name.startswith("studyhall.storage"):
                assert name in STORAGE_MODULES, where


def test_no_module_is_loaded_by_file_path() -> None:
    for path in BRIDGE.rglob("*.py"):
        text = path.read_text()
        for how in ("spec_from_file_location", "SourceFileLoader", "runpy"):
            assert how not in text, f"{path.relative_to(BRIDGE)} uses {how}"
