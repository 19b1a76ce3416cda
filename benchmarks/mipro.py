"""MiproLoop: what Wilcoxon pruning saves, and what parallel workers gain under one rate limit.

Side by side in one run, on the simulated task served by FakeProvider over HTTP:

1. pruning: the same search (seed, trials, minibatches) with and without the
   WilcoxonPruner; for each seed, the LLM calls and tokens each run had spent when
   its best full-valset score first reached the score both runs reach (the lower of
   their two bests). Without pruning is DSPy MIPROv2's way (every minibatch scored
   to the end).
2. workers: wall time of the same search with 1 worker (DSPy's sequential trials)
   and with 2, without a provider limit and under one that 2 workers saturate.

    python benchmarks/mipro.py            # about 2 minutes
    python benchmarks/mipro.py --quick    # a few seconds per part
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from studyhall.bridge import FakeProvider, Limit, LLMClient, RateLimiter  # noqa: E402
from studyhall.optimizer import MiproLoop, MiproResult, arith_task  # noqa: E402


def _loop(url: str, name: str, base_url: str, task, *, limiter=None, **kw) -> MiproLoop:  # type: ignore[no-untyped-def]
    lm = LLMClient("sim-small", base_url=base_url, api_key="sim", limiter=limiter, timeout=120.0)
    return MiproLoop(
        task.program,
        task.metric,
        instructions=task.instructions,
        demos=task.demos,
        valset=task.valset,
        lm=lm,
        study=name,
        storage=url,
        **kw,
    )


def _cost_to_reach(result: MiproResult, target: float) -> tuple[int, int] | None:
    for f in result.full_evals:  # oldest first; the study's totals when each finished
        if f.score >= target - 1e-12:
            return f.study_calls, f.study_tokens
    return None


def pruning(url: str, seeds: list[int], trials: int) -> None:
    task = arith_task(n_val=100)
    print(f"\n== pruning: {trials} trials, minibatch 35, valset 100, seeds {seeds}")
    print(
        f"{'seed':>4}  {'target':>6}  {'calls plain':>11}  {'calls pruned':>12}  {'tokens plain':>12}  {'tokens pruned':>13}  pruned trials"
    )
    tot = {"cp": 0, "cq": 0, "tp": 0, "tq": 0}
    with FakeProvider(rpm=None, tpm=None, latency_s=(0.005, 0.02), responder=task.responder()) as fp:
        for seed in seeds:
            common = dict(minibatch_size=35, full_eval_every=5, seed=seed, workers=0, concurrency=4)
            plain = _loop(url, f"plain-{seed}", fp.base_url, task, **common).run(n_trials=trials)
            pruned = _loop(url, f"pruned-{seed}", fp.base_url, task, prune=True, **common).run(n_trials=trials)
            target = min(plain.best_full_score or 0.0, pruned.best_full_score or 0.0)
            a, b = _cost_to_reach(plain, target), _cost_to_reach(pruned, target)
            assert a is not None and b is not None
            print(
                f"{seed:>4}  {target:>6.3f}  {a[0]:>11}  {b[0]:>12}  {a[1]:>12}  {b[1]:>13}  {pruned.pruned}/{pruned.trials}"
                f"  (whole runs: {plain.llm_calls} vs {pruned.llm_calls} calls, best {plain.best_full_score:.3f} vs {pruned.best_full_score:.3f})"
            )
            tot["cp"] += a[0]
            tot["cq"] += b[0]
            tot["tp"] += a[1]
            tot["tq"] += b[1]
    print(
        f"to reach the same best full-eval score, pruning used {tot['cq'] / tot['cp']:.2f}x the LLM calls "
        f"and {tot['tq'] / tot['tp']:.2f}x the tokens of the unpruned search (sum over seeds)"
    )


def workers(url: str, trials: int, limits: list[float | None]) -> None:
    task = arith_task(n_val=40)
    print(f"\n== workers: {trials} trials, minibatch 20, concurrency 4 per trial, 0.1-0.3 s per call")
    for per_s in limits:
        times, rates = {}, {}
        for n in (1, 2):
            rpm = per_s if per_s is not None else None
            with FakeProvider(
                rpm=rpm, tpm=None, per=1.0, latency_s=(0.1, 0.3), responder=task.responder(), seed=1
            ) as fp:
                # the limiter is told the provider's limit, in the database, shared by the workers
                lim = (
                    None
                    if per_s is None
                    else RateLimiter(
                        f"bench-{n}-{time.monotonic_ns()}", limits=[Limit(requests=per_s, per=1.0)], storage=url
                    )
                )
                start = time.monotonic()
                r = _loop(
                    url,
                    f"workers-{n}-{per_s}",
                    fp.base_url,
                    task,
                    limiter=lim,
                    minibatch_size=20,
                    full_eval_every=5,
                    seed=0,
                    workers=n,
                    concurrency=4,
                ).run(n_trials=trials)
                times[n] = time.monotonic() - start
                rates[n] = r.llm_calls / times[n]
                stats = fp.stats()
            label = "no limit" if per_s is None else f"limit {per_s:g}/s"
            print(
                f"  {label:>13}, {n} worker{'s' if n > 1 else ' '}: {times[n]:6.1f} s  {r.llm_calls} calls "
                f"({rates[n]:.1f}/s), 429s {stats['rate_limited']}, best full score {r.best_full_score:.3f}"
            )
        capped = per_s is not None and rates[2] >= 0.85 * per_s
        print(
            f"  {label:>13}: 2 workers took {times[2] / times[1]:.2f}x the wall time of 1 "
            f"(speed-up {times[1] / times[2]:.2f}x{'; the limit caps it' if capped else ''})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("studyhall.bridge.llm").setLevel(logging.ERROR)  # retried 429s are counted, not logged
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        if args.quick:
            pruning(url, seeds=[0], trials=10)
            workers(url, trials=5, limits=[None])
        else:
            pruning(url, seeds=[0, 1, 2], trials=25)
            workers(url, trials=10, limits=[None, 15.0])


if __name__ == "__main__":
    main()
