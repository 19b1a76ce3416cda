"""studyhall ask/tell against raw Optuna ask/tell, side by side on the same kind of storage.

Prints trials/s for both and studyhall's time per trial as a multiple of Optuna's
(targets: <= 1.10x with a plain value, <= 1.25x with 100 scores per trial), and the
per-trial latency of early vs late trials of a long study.

    python benchmarks/ask_tell.py            # 500 trials, SQLite file + PostgreSQL
    python benchmarks/ask_tell.py --quick    # 60 trials, SQLite only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import optuna

from _pg import drop_scratch_schema, scratch_schema_url
from studyhall.optimizer import Float, Int, Orchestrator

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SPACE = {"x": Float(-5.0, 5.0), "y": Float(0.0, 1.0), "k": Int(1, 8)}
DISTS = {k: v.distribution() for k, v in SPACE.items()}


def sampler(name: str) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=0)
    return optuna.samplers.RandomSampler(seed=0)


def run_optuna(url: str, sampler_name: str, n: int, n_scores: int) -> list[float]:
    study = optuna.create_study(storage=url, study_name=f"raw-{uuid.uuid4().hex[:8]}", sampler=sampler(sampler_name))
    rng = np.random.default_rng(0)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        t = study.ask(DISTS)
        scores = rng.random(n_scores) if n_scores else None
        # What an Optuna user does to keep a distribution: the mean as the value,
        # the rest as user attributes, one write each.
        if scores is not None:
            for k, v in (("mean", scores.mean()), ("p50", np.median(scores)), ("p90", np.quantile(scores, 0.9))):
                t.set_user_attr(f"score.{k}", float(v))
            study.tell(t, float(scores.mean()))
        else:
            study.tell(t, t.params["x"] ** 2)
        lat.append(time.perf_counter() - t0)
    return lat


def run_studyhall(url: str, sampler_name: str, n: int, n_scores: int) -> list[float]:
    study = Orchestrator(url).create_study(f"sh-{uuid.uuid4().hex[:8]}", sampler=sampler(sampler_name))
    rng = np.random.default_rng(0)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        t = study.ask(SPACE)
        if n_scores:
            study.tell(t, scores=rng.random(n_scores))
        else:
            study.tell(t, t.params["x"] ** 2)
        lat.append(time.perf_counter() - t0)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--long", type=int, default=2000, help="length of the study for the early/late latency comparison")
    ap.add_argument("--quick", action="store_true", help="a tiny run (60 trials, SQLite only)")
    args = ap.parse_args()
    n, n_long = (60, 300) if args.quick else (args.trials, args.long)

    tmp = Path(tempfile.mkdtemp(prefix="studyhall-bench-"))
    backends = {"sqlite": lambda side: f"sqlite:///{tmp / (side + '-' + uuid.uuid4().hex[:6])}.db"}
    pg = None if args.quick else scratch_schema_url()
    if pg:
        backends["postgresql"] = lambda side: pg

    print(f"{'backend':<11}{'sampler':<8}{'scores':>7}{'optuna tr/s':>13}{'studyhall tr/s':>16}{'time ratio':>12}")
    for backend, url_for in backends.items():
        for smp in ("random", "tpe"):
            for n_scores in (0, 100):
                raw = run_optuna(url_for("optuna"), smp, n, n_scores)
                ours = run_studyhall(url_for("studyhall"), smp, n, n_scores)
                ratio = sum(ours) / sum(raw)
                target = 1.25 if n_scores else 1.10
                flag = "ok" if ratio <= target else f"> {target}"
                print(
                    f"{backend:<11}{smp:<8}{n_scores:>7}{n / sum(raw):>13.1f}{n / sum(ours):>16.1f}"
                    f"{ratio:>11.2f}x {flag}"
                )

    print(f"\nper-trial latency (ms, median) early vs late in a {n_long}-trial study, random sampler, SQLite")
    raw = run_optuna(backends["sqlite"]("optuna-long"), "random", n_long, 0)
    ours = run_studyhall(backends["sqlite"]("studyhall-long"), "random", n_long, 0)
    k = min(100, n_long // 4)
    for label, lat in (("optuna", raw), ("studyhall", ours)):
        early, late = statistics.median(lat[:k]) * 1e3, statistics.median(lat[-k:]) * 1e3
        print(
            f"  {label:<10} trials 1-{k}: {early:6.2f}   trials {n_long - k + 1}-{n_long}: {late:6.2f}   growth {late / early:4.2f}x"
        )
    if pg:
        drop_scratch_schema(pg)


if __name__ == "__main__":
    main()
