"""Scale-out: aggregate trials/s of 1, 2 and 3 "hosts" x 4 workers on one PostgreSQL, against plain Optuna.

A host is one process running ``Study.optimize(objective, workers=4, timeout=D)`` (what
``studyhall worker`` does); the objective suggests two parameters and sleeps 50 ms.
Against it, the same parallelism in plain Optuna: 4 processes per host, each
``optuna.create_study(storage=<the RDB URL>, load_if_exists=True).optimize(...)``.
Every configuration gets its own study on one scratch PostgreSQL schema; processes
start together (a shared start time) and run for D seconds.

Targets (issue 15): studyhall's aggregate >= 2x plain Optuna's at 3 hosts, and >= 80%
of linear from 1 to 3 hosts (3-host rate >= 0.8 * 3 * 1-host rate).

    python benchmarks/multihost.py             # D = 10 s per configuration
    python benchmarks/multihost.py --seconds 20  # less of the processes' start-up in the figures
    python benchmarks/multihost.py --quick       # 3 s per configuration
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _pg import drop_scratch_schema, scratch_schema_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OBJECTIVE_S = 0.05
WORKERS = 4


def objective(trial) -> float:  # type: ignore[no-untyped-def]
    """Two parameters and 50 ms of 'LLM call' (imported by name in the pool's workers)."""
    x = trial.suggest_float("x", -5, 5)
    k = trial.suggest_int("k", 1, 8)
    time.sleep(OBJECTIVE_S)
    return (x - 1) ** 2 + k


STUDYHALL_HOST = f"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from studyhall import Orchestrator
from studyhall.storage import connect
url, name, go, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[5])
study = Orchestrator(connect(url)).load_study(name)
time.sleep(max(0.0, go - time.time()))
t0 = time.time()
report = study.optimize("multihost:objective", workers={WORKERS}, timeout=seconds, progress=False)
import os
end, cpu = time.time(), sum(os.times()[:4])  # this process and its reaped pool workers
print(json.dumps({{"start": t0, "end": end, "cpu": cpu}}))
"""

OPTUNA_PROCESS = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
import optuna
from multihost import objective
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, go, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[5])
study = optuna.create_study(storage=url, study_name=name, load_if_exists=True)
time.sleep(max(0.0, go - time.time()))
t0 = time.time()
study.optimize(objective, timeout=seconds)
import os
print(json.dumps({"start": t0, "end": time.time(), "cpu": sum(os.times()[:4])}))
"""


def run(kind: str, url: str, hosts: int, seconds: float) -> tuple[float, float]:
    """Aggregate COMPLETE trials/s of one configuration (its own study), and CPU ms per trial."""
    name = f"mh-{kind}-{hosts}-{uuid.uuid4().hex[:6]}"
    if kind == "studyhall":
        from studyhall import Orchestrator

        Orchestrator(url).create_study(name, sampler="tpe")
        code, procs_n = STUDYHALL_HOST, hosts
    else:
        import optuna

        optuna.create_study(storage=url, study_name=name)
        code, procs_n = OPTUNA_PROCESS, hosts * WORKERS
    go = time.time() + 4.0 + 0.3 * procs_n  # every process imported and connected by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, name, str(go), str(HERE), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(procs_n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise SystemExit(f"{kind} process failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    start, end = min(r["start"] for r in results), max(r["end"] for r in results)
    complete = _complete(url, name)
    return complete / (end - start), 1000 * sum(r["cpu"] for r in results) / max(1, complete)


def _complete(url: str, name: str) -> int:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each configuration runs")
    parser.add_argument("--quick", action="store_true", help="3 s per configuration")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3.0
    url = scratch_schema_url()
    if url is None:
        print("multihost: needs PostgreSQL on 127.0.0.1:5432")
        return
    try:
        print(
            f"aggregate COMPLETE trials/s, {WORKERS} workers per host, {OBJECTIVE_S * 1000:.0f} ms objective, "
            f"{args.seconds:.0f} s per configuration (ideal: {WORKERS / OBJECTIVE_S:.0f}/s per host); "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        # CPU ms per trial (including imports and start-up): on a machine with fewer cores than
        # processes, aggregate trials/s is bounded by cores / CPU per trial, however many hosts.
        print(f"{'hosts':>5} {'studyhall':>10} {'optuna':>10} {'ratio':>7} {'cpu ms/trial (sh, optuna)':>27}")
        rates: dict[int, tuple[float, float]] = {}
        for hosts in (1, 2, 3):
            (ours, our_cpu), (theirs, their_cpu) = (
                run("studyhall", url, hosts, args.seconds),
                run("optuna", url, hosts, args.seconds),
            )
            rates[hosts] = (ours, theirs)
            print(
                f"{hosts:>5} {ours:>10.1f} {theirs:>10.1f} {ours / theirs:>6.2f}x {our_cpu:>13.0f} {their_cpu:>13.0f}",
                flush=True,
            )
        ratio3 = rates[3][0] / rates[3][1]
        linear = rates[3][0] / (3 * rates[1][0])
        print(
            f"3 hosts: studyhall/optuna {ratio3:.2f}x (target >= 2x: {'met' if ratio3 >= 2 else 'NOT met'}); "
            f"1 -> 3 hosts {linear:.0%} of linear (target >= 80%: {'met' if linear >= 0.8 else 'NOT met'}); "
            f"load average after {os.getloadavg()[0]:.1f}"
        )
    finally:
        drop_scratch_schema(url)


if __name__ == "__main__":
    main()
