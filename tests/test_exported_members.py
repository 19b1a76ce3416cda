"""Every public name of API.md is exported, and every package's __all__ is complete and sorted."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

API = {
    "studyhall.storage": ["connect", "StudyhallError", "InvalidRequest"],
    "studyhall.optimizer": ["Orchestrator", "Float", "Int", "Categorical", "Evaluation"],
    "studyhall.bridge": [
        "WorkerPool",
        "TaskTimeout",
        "WorkerCrashed",
        "PoolClosed",
        "RateLimiter",
        "Limit",
        "RateLimitTimeout",
        "LLMClient",
        "Completion",
        "ProviderError",
        "RateLimited",
        "LLMTimeout",
        "FakeProvider",
    ],
}
PACKAGES = sorted(API)


@pytest.mark.parametrize("package", PACKAGES)
def test_api_names_exist(package):
    mod = importlib.import_module(package)
    missing = [n for n in API[package] if not hasattr(mod, n)]
    assert not missing


@pytest.mark.parametrize("package", [*PACKAGES, "studyhall"])
def test_all_is_sorted_and_resolves(package):
    mod = importlib.import_module(package)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
        obj = getattr(mod, name)
        if callable(obj) and getattr(obj, "__module__", "").startswith("studyhall."):
            assert (obj.__doc__ or "").strip(), f"{package}.{name} has no docstring"


def test_public_names_defined_in_private_modules_are_exported():
    for package in PACKAGES:
        mod = importlib.import_module(package)
        exported = {getattr(mod, n) for n in mod.__all__ if not isinstance(getattr(mod, n), (int, str))}
        for name, obj in vars(mod).items():
            if name.startswith("_") or isinstance(obj, type(importlib)):
                continue
            if getattr(obj, "__module__", "").startswith(package + "._"):
                assert obj in exported, f"{package}.{name} is public but not in __all__"


def test_front_door_reexports_every_public_name():
    import studyhall

    union = set()
    for package in PACKAGES:
        union |= set(importlib.import_module(package).__all__)
    assert set(studyhall.__all__) == union
    for name in studyhall.__all__:
        assert getattr(studyhall, name) is not None, name


def test_one_root_exception():
    from studyhall import bridge, optimizer, storage

    for mod in (storage, bridge, optimizer):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, Exception):
                assert issubclass(obj, storage.StudyhallError), name


def test_bridge_and_the_front_door_load_without_sqlalchemy_or_optuna():
    # A pool worker imports studyhall.bridge: it must not pay for SQLAlchemy or Optuna.
    code = (
        "import sys, studyhall, studyhall.bridge; from studyhall.bridge import WorkerPool, StudyhallError; "
        "print(sorted(m for m in ('sqlalchemy', 'optuna', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
