"""Objectives for the optimize() tests, importable by name ("tests.optimizer.optimize_objectives:fn").

studyhall and Optuna are imported inside the objectives that use them: a worker
then starts its first trial in milliseconds, well within the tests' trial timeouts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def quadratic(trial) -> float:  # type: ignore[no-untyped-def]
    """A smooth minimum at x=2 (define-by-run, as in Optuna's tutorial)."""
    x = trial.suggest_float("x", -10, 10)
    return (x - 2) ** 2


def sleepy(trial) -> float:  # type: ignore[no-untyped-def]
    """Takes $STUDYHALL_TEST_SLEEP seconds (after the first $STUDYHALL_TEST_FAST trials), so trials overlap."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number >= int(os.environ.get("STUDYHALL_TEST_FAST", "0")):
        time.sleep(float(os.environ.get("STUDYHALL_TEST_SLEEP", "0.05")))
    return x


def by_kind(trial) -> float:  # type: ignore[no-untyped-def]
    """Behaves as the enqueued ``kind`` says: ok, raise, crash, hang, nan, sequence, evaluation."""
    kind = trial.suggest_categorical("kind", ["ok", "raise", "crash", "hang", "nan", "scores", "evaluation"])
    if kind == "raise":
        raise ValueError("bad prompt template")
    if kind == "crash":
        os._exit(7)
    if kind == "hang":
        time.sleep(60)
    if kind == "nan":
        return float("nan")
    if kind == "scores":
        return [1.0, 0.0, 1.0, 1.0]
    if kind == "evaluation":
        from studyhall.bridge import current_recorder
        from studyhall.optimizer import Evaluation

        rec = current_recorder()
        assert rec is not None
        for latency in (0.1, 0.2, 0.4):
            rec.observe("llm.latency_s", latency)
        rec.add("llm.tokens", 120)
        rec.add("llm.rate_limited", 1)
        trial.observe("judge.latency_s", 0.05)
        trial.set_user_attr("prompt", "be brief")
        return Evaluation(scores=[1, 1, 0, 1], metrics={"len": [10, 20]}, user_attrs={"model": "fake"})
    return 1.0


def crash_once(trial) -> float:  # type: ignore[no-untyped-def]
    """Dies (os._exit) the first time it sees a value of ``x``; succeeds on the retry."""
    x = trial.suggest_float("x", 0, 1)
    marker = Path(os.environ["STUDYHALL_TEST_MARKERS"]) / f"{x!r}"
    if not marker.exists():
        marker.touch()
        os._exit(3)
    return x


def pruned_by_parent(trial) -> float:  # type: ignore[no-untyped-def]
    """Reports a bad curve; the parent's pruner stops it."""
    import optuna

    trial.suggest_float("x", 0, 1)
    for step in range(10):
        trial.report(100.0 - step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return 0.0


def uses_service(trial) -> float:  # type: ignore[no-untyped-def]
    """Reads the ``scale`` service (overridden in the test) in whatever process it runs."""
    from studyhall.optimizer import services

    trial.suggest_float("x", 0, 1)
    return float(services.get("scale"))


def pid(trial) -> float:  # type: ignore[no-untyped-def]
    """The process it ran in, as the value."""
    trial.suggest_float("x", 0, 1)
    return float(os.getpid())


def heavy_modules(trial) -> object:  # type: ignore[no-untyped-def]
    """Reports which heavy libraries the process running the trial has loaded (an Evaluation, as objectives may)."""
    import sys

    from studyhall.optimizer import Evaluation

    x = trial.suggest_float("x", 0, 1)
    heavy = sorted(m for m in ("optuna", "sqlalchemy", "fastapi", "httpx") if m in sys.modules)
    return Evaluation(value=x, user_attrs={"heavy": heavy})


def oversized_attr(trial) -> float:  # type: ignore[no-untyped-def]
    """Trial 1 keeps a user attribute too big for any backend (70 KB); the others a small one."""
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("blob", "x" * (70_000 if trial.number == 1 else 10))
    return x
