"""Objectives for the command-line tests (``studyhall worker --objective tests.optimizer.cli_objectives:...``)."""

from __future__ import annotations


def always_fails(trial) -> float:  # type: ignore[no-untyped-def]
    """A broken objective: every trial fails."""
    trial.suggest_float("x", 0, 1)
    raise ValueError("broken objective")
