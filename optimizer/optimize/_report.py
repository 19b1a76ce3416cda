"""What ``optimize`` takes (checked ``Options``) and what it returns (``OptimizeReport``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from studyhall.storage import InvalidRequest


@dataclass
class OptimizeReport:
    """What one ``optimize`` call did; the outcome counts are disjoint.

    ``best_value``/``best_params`` are the study's best after the call (single
    objective; None otherwise). ``interrupted`` counts trials failed by Ctrl-C.
    ``lost`` counts trials taken over by another process while this one stalled past
    the heartbeat grace period: not told from here, not in ``n_trials``.
    """

    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    crashed: int = 0
    pruned: int = 0
    interrupted: int = 0
    retried: int = 0
    lost: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    @property
    def n_trials(self) -> int:
        """Trials this call finished, whatever their outcome."""
        return self.completed + self.failed + self.timed_out + self.crashed + self.pruned + self.interrupted

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {**asdict(self), "n_trials": self.n_trials}


@dataclass(frozen=True)
class Options:
    """The knobs of one ``optimize`` call, checked on construction (InvalidRequest)."""

    n_trials: int | None = None
    timeout: float | None = None
    workers: int = 1
    trial_timeout: float | None = None
    retries: int = 0
    progress: bool = True
    max_total_trials: int | None = None
    catch: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        _integer(self.n_trials, "n_trials", 0)
        _integer(self.max_total_trials, "max_total_trials", 1)
        _integer(self.workers, "workers", 0, allow_none=False)
        _integer(self.retries, "retries", 0, allow_none=False)
        for name in ("timeout", "trial_timeout"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise InvalidRequest(f"{name} must be a number of seconds > 0 (or None); got {v!r}")
        if self.workers == 0 and self.trial_timeout is not None:
            raise InvalidRequest("trial_timeout needs worker processes to kill; use workers >= 1")
        catch = self.catch
        if not (isinstance(catch, tuple) and all(isinstance(c, type) and issubclass(c, BaseException) for c in catch)):
            raise InvalidRequest(f"catch must be a tuple of exception classes, e.g. (ValueError,); got {catch!r:.80}")


def _integer(v: Any, name: str, low: int, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InvalidRequest(f"{name} must be an integer >= {low}{' (or None)' if allow_none else ''}; got {v!r}")
