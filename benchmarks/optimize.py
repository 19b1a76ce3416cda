"""studyhall ``optimize(workers=2)`` against Optuna's sequential ``study.optimize``, same storage kind.

A 50 ms objective (``time.sleep(0.05)``, standing in for an LLM call) on two fresh
SQLite files, one for each side. Prints trials/s for both and the ratio (target:
>= 1.8x), with and without the pool's start-up (worker processes importing the
objective's modules) counted.

    python benchmarks/optimize.py            # 40 trials each, TPE and random sampler, 3 rounds
    python benchmarks/optimize.py --quick    # 16 trials each, random sampler only, 1 round
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna

from studyhall.optimizer import Orchestrator

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SLEEP_S = 0.05


def objective(trial) -> float:  # type: ignore[no-untyped-def]
    x = trial.suggest_float("x", -5.0, 5.0)
    k = trial.suggest_int("k", 1, 8)
    time.sleep(SLEEP_S)
    return (x - 1) ** 2 + k


def make_sampler(name: str) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=0)
    return optuna.samplers.RandomSampler(seed=0)


def run_optuna(url: str, sampler: str, n: int) -> float:
    study = optuna.create_study(storage=url, study_name=f"raw-{uuid.uuid4().hex[:8]}", sampler=make_sampler(sampler))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n)
    return n / (time.perf_counter() - t0)


def run_studyhall(url: str, sampler: str, n: int, workers: int) -> tuple[float, float]:
    study = Orchestrator(url).create_study(f"sh-{uuid.uuid4().hex[:8]}", sampler=sampler, seed=0)
    t0 = time.perf_counter()
    report = study.optimize(objective, n_trials=n, workers=workers, progress=False)
    total = time.perf_counter() - t0
    assert report.completed == n, report
    # The first trial of each worker also pays its start-up; the rest is the steady state.
    ends = sorted(t.datetime_complete for t in study.trials())
    steady = (ends[-1] - ends[workers - 1]).total_seconds()
    return n / total, (n - workers) / steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 trials, random sampler only, one round")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per sampler; medians are printed")
    args = ap.parse_args()
    n = args.trials or (16 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 3)
    samplers = ["random"] if args.quick else ["random", "tpe"]
    print(
        f"{n} trials of a {SLEEP_S * 1000:.0f} ms objective; studyhall with workers={args.workers}; "
        f"median of {rounds} alternating round(s)"
    )
    print(f"{'sampler':8} {'optuna seq/s':>13} {'studyhall/s':>12} {'ratio':>7} {'steady/s':>9} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in samplers:
            raws, ours, steadies = [], [], []
            for r in range(rounds):
                raws.append(run_optuna(f"sqlite:///{Path(tmp) / f'raw-{sampler}-{r}.db'}", sampler, n))
                total, steady = run_studyhall(
                    f"sqlite:///{Path(tmp) / f'sh-{sampler}-{r}.db'}", sampler, n, args.workers
                )
                ours.append(total)
                steadies.append(steady)
            raw, our, steady = (statistics.median(x) for x in (raws, ours, steadies))
            print(f"{sampler:8} {raw:13.1f} {our:12.1f} {our / raw:6.2f}x {steady:9.1f} {steady / raw:6.2f}x")


if __name__ == "__main__":
    main()
