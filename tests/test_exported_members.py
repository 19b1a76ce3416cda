"""Every public name of API.md is exported, and every package's __all__ is complete and sorted."""

from __future__ import annotations

import importlib

import pytest

API = {
    "storage": ["connect", "StudyhallError", "InvalidRequest"],
    "optimizer": ["Orchestrator", "Float", "Int", "Categorical", "Evaluation"],
    "bridge": [
        "WorkerPool", "TaskTimeout", "WorkerCrashed", "PoolClosed", "RateLimiter", "Limit",
        "RateLimitTimeout", "LLMClient", "Completion", "ProviderError", "RateLimited",
        "LLMTimeout", "FakeProvider",
    ],
}


@pytest.mark.parametrize("package", sorted(API))
def test_api_names_exist(package):
    mod = importlib.import_module(package)
    missing = [n for n in API[package] if not hasattr(mod, n)]
    assert not missing


@pytest.mark.parametrize("package", sorted(API))
def test_all_is_sorted_and_resolves(package):
    mod = importlib.import_module(package)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
        obj = getattr(mod, name)
        if callable(obj) and getattr(obj, "__module__", "").split(".")[0] in API:
            assert (obj.__doc__ or "").strip(), f"{package}.{name} has no docstring"


def test_public_names_defined_in_private_modules_are_exported():
    for package in API:
        mod = importlib.import_module(package)
        exported = {getattr(mod, n) for n in mod.__all__ if not isinstance(getattr(mod, n), (int, str))}
        for name, obj in vars(mod).items():
            if name.startswith("_") or isinstance(obj, type(importlib)):
                continue
            if getattr(obj, "__module__", "").startswith(package + "._"):
                assert obj in exported, f"{package}.{name} is public but not in __all__"


def test_one_root_exception():
    import bridge
    import optimizer
    import storage

    for mod in (storage, bridge, optimizer):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, Exception):
                assert issubclass(obj, storage.StudyhallError), name
