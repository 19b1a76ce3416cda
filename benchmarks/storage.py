"""studyhall's storage against Optuna's RDBStorage and JournalStorage, side by side in one run.

Each part prints its figures and whether the issue's target is met:

    single     ask+tell trials/s in one process, random and TPE, SQLite / PostgreSQL / MariaDB
               (studyhall >= 5x RDBStorage on SQLite random, >= 3x TPE, >= 2x PostgreSQL)
    processes  4 processes on one study: aggregate trials/s (>= 3x Optuna's), zero errors
    optimize   optimize(workers=W) with a 100 ms objective: share of the ideal W/0.1 trials/s
               (>= 90% at W=8, >= 75% at W=16)
    service    `studyhall serve` with 8 clients vs in-process (>= 0.8x; ask p99 < 100 ms on SQLite)
    cold       a fresh process's first TPE trial in a study of 3,000 trials (<= 200 ms)
    chaos      connections killed every 0.7 s while 4 processes ask and tell 120 trials each
               (PostgreSQL and MariaDB: exactly 480 trials, none RUNNING, no error)

    python benchmarks/storage.py                    # everything
    python benchmarks/storage.py --only single,cold # some parts
    python benchmarks/storage.py --quick            # small sizes, SQLite only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution, IntDistribution

from _pg import drop_scratch_mysql, drop_scratch_schema, scratch_mysql_url, scratch_schema_url
from _serve import serve
from studyhall import Client, Float, Int, Orchestrator

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
ROOT = Path(__file__).resolve().parents[1]
SPACE = {"x": Float(-5.0, 5.0), "y": Float(0.0, 1.0), "k": Int(1, 8)}
DISTS = {"x": FloatDistribution(-5.0, 5.0), "y": FloatDistribution(0.0, 1.0), "k": IntDistribution(1, 8)}


def value(params: dict[str, float]) -> float:
    return (params["x"] - 1) ** 2 + params["y"] + params["k"]


def make_sampler(name: str, seed: int | None = 0) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---- single process -------------------------------------------------------------------------


def optuna_loop(storage: object, sampler: str, n: int) -> float:
    study = optuna.create_study(storage=storage, study_name=f"o-{uuid.uuid4().hex[:8]}", sampler=make_sampler(sampler))
    t0 = time.perf_counter()
    for _ in range(n):
        t = study.ask(DISTS)
        study.tell(t, value(t.params))
    return n / (time.perf_counter() - t0)


def studyhall_loop(url: str, sampler: str, n: int) -> float:
    study = Orchestrator(url).create_study(f"s-{uuid.uuid4().hex[:8]}", sampler=make_sampler(sampler))
    t0 = time.perf_counter()
    for _ in range(n):
        t = study.ask(SPACE)
        study.tell(t, value(t.params))
    return n / (time.perf_counter() - t0)


def part_single(backends: dict[str, Callable[[], str]], n: int, tmp: Path) -> None:
    print(f"\n== single process: ask+tell trials/s ({n} trials, 3 parameters)")
    print(f"{'backend':<11}{'sampler':<8}{'RDBStorage':>11}{'Journal':>9}{'studyhall':>11}{'vs RDB':>8}  target")
    targets = {
        ("sqlite", "random"): 5.0,
        ("sqlite", "tpe"): 3.0,
        ("postgresql", "random"): 2.0,
        ("postgresql", "tpe"): 2.0,
    }
    for backend, url_for in backends.items():
        for smp in ("random", "tpe"):
            rdb = optuna_loop(url_for(), smp, n)
            journal = None
            if backend == "sqlite":
                path = tmp / f"journal-{uuid.uuid4().hex[:6]}.log"
                journal = optuna_loop(
                    optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path))), smp, n
                )
            ours = studyhall_loop(url_for(), smp, n)
            target = targets.get((backend, smp))
            flag = "" if target is None else f">= {target:.0f}x {verdict(ours / rdb >= target)}"
            j = f"{journal:>9.0f}" if journal else f"{'-':>9}"
            print(f"{backend:<11}{smp:<8}{rdb:>11.0f}{j}{ours:>11.0f}{ours / rdb:>7.2f}x  {flag}", flush=True)


# ---- several processes ----------------------------------------------------------------------

WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
kind, url, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from storage import DISTS, SPACE, value
errors = 0
if kind == "optuna":
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
    ask, tell = (lambda: study.ask(DISTS)), (lambda t: study.tell(t, value(t.params)))
else:
    from studyhall import Orchestrator
    study = Orchestrator(url).load_study(name, sampler="random")
    ask, tell = (lambda: study.ask(SPACE)), (lambda t: study.tell(t, value(t.params)))
t0 = time.time()
for _ in range(n):
    try:
        tell(ask())
    except Exception as exc:
        errors += 1
        print(f"{type(exc).__name__}: {exc}"[:300], file=sys.stderr)
print(json.dumps({"start": t0, "end": time.time(), "errors": errors}))
"""


def run_processes(
    kind: str, url: str, name: str, procs: int, n_each: int, env: dict[str, str] | None = None
) -> tuple[float, int, list[str]]:
    """Aggregate trials/s of ``procs`` processes on one study, their error count and stderr tails."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, kind, url, name, str(n_each), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for _ in range(procs)
    ]
    results, errors, tails = [], 0, []
    for child in children:
        out, err = child.communicate(timeout=900)
        if child.returncode != 0 or not out.strip():
            errors += 1
            tails.append(err[-400:])
            continue
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        errors += r["errors"]
        if r["errors"]:
            tails.append(err[-400:])
    if not results:
        return 0.0, errors, tails
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return procs * n_each / wall, errors, tails


def part_processes(backends: dict[str, Callable[[], str]], procs: int, n_each: int) -> None:
    print(f"\n== {procs} processes on one study, {n_each} ask+tell each (random sampler): aggregate trials/s")
    print(f"{'backend':<11}{'optuna':>8}{'studyhall':>11}{'ratio':>8}{'errors':>8}  target >= 3x, 0 errors")
    for backend, url_for in backends.items():
        url_o, url_s = url_for(), url_for()
        # A server backend hands both sides the same database: one study name each.
        name = f"p-{uuid.uuid4().hex[:8]}"
        optuna.create_study(storage=url_o, study_name=f"{name}-o", sampler=make_sampler("random"))
        Orchestrator(url_s).create_study(f"{name}-s", sampler="random")
        rate_o, err_o, _ = run_processes("optuna", url_o, f"{name}-o", procs, n_each)
        rate_s, err_s, tails = run_processes("studyhall", url_s, f"{name}-s", procs, n_each)
        ok = rate_s >= 3 * rate_o and err_s == 0
        print(
            f"{backend:<11}{rate_o:>8.0f}{rate_s:>11.0f}{rate_s / max(rate_o, 1e-9):>7.2f}x{err_s:>8}  {verdict(ok)}"
            f"{'' if not err_o else f' (optuna errors: {err_o})'}",
            flush=True,
        )
        for tail in tails[:2]:
            print("   ", tail.strip().replace("\n", "\n    "))


# ---- optimize -------------------------------------------------------------------------------


def sleepy(trial: object) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)  # type: ignore[attr-defined]
    y = trial.suggest_float("y", 0.0, 1.0)  # type: ignore[attr-defined]
    k = trial.suggest_int("k", 1, 8)  # type: ignore[attr-defined]
    time.sleep(0.1)  # the LLM call this stands for
    return value({"x": x, "y": y, "k": k})


def part_optimize(backends: dict[str, Callable[[], str]], widths: list[int], per_worker: int) -> None:
    print(f"\n== optimize(workers=W), 100 ms objective, {per_worker} trials per worker, space given up front")
    print("(share: of the whole call, worker start-up included; steady: between the 10% and 90% marks of trials ended)")
    print(f"{'backend':<11}{'W':>4}{'trials/s':>10}{'ideal':>7}{'share':>8}{'steady':>8}  target")
    for backend, url_for in backends.items():
        for w in widths:
            study = Orchestrator(url_for()).create_study(f"opt-{uuid.uuid4().hex[:8]}", sampler="random")
            n = w * per_worker
            study.optimize(sleepy, n_trials=w, workers=w, space=SPACE, progress=False)  # warm: imports cached
            t0 = time.perf_counter()
            report = study.optimize(sleepy, n_trials=n, workers=w, space=SPACE, progress=False)
            rate = report.completed / (time.perf_counter() - t0)
            share = rate / (w / 0.1)
            ends = sorted(t.datetime_complete.timestamp() for t in study.trials() if t.number >= w)
            lo, hi = ends[len(ends) // 10], ends[9 * len(ends) // 10]
            steady = (9 * len(ends) // 10 - len(ends) // 10) / (hi - lo) / (w / 0.1)
            target = {8: 0.9, 16: 0.75}.get(w)
            flag = "" if target is None else f">= {target:.0%} {verdict(share >= target)}"
            print(f"{backend:<11}{w:>4}{rate:>10.1f}{w / 0.1:>7.0f}{share:>8.0%}{steady:>8.0%}  {flag}", flush=True)


# ---- the HTTP service -----------------------------------------------------------------------


def part_service(url: str, n: int, clients: int = 8) -> None:
    print(f"\n== `studyhall serve` with {clients} clients vs in-process, {n} ask+tell (random sampler)")
    orch = Orchestrator(url)

    def run(make: Callable[[], object]) -> tuple[float, list[float]]:
        studies = [make() for _ in range(clients)]
        asks: list[float] = []
        lock = threading.Lock()

        def loop(study: object) -> None:
            mine = []
            for _ in range(n // clients):
                t0 = time.perf_counter()
                t = study.ask(SPACE)  # type: ignore[attr-defined]
                mine.append(time.perf_counter() - t0)
                study.tell(t, value(t.params))  # type: ignore[attr-defined]
            with lock:
                asks.extend(mine)

        threads = [threading.Thread(target=loop, args=(s,)) for s in studies]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return (n // clients) * clients / (time.perf_counter() - t0), asks

    name = f"svc-{uuid.uuid4().hex[:8]}"
    orch.create_study(f"{name}-local", sampler="random")
    local, _ = run(lambda: orch.load_study(f"{name}-local"))
    opened: list[Client] = []
    with serve(url) as base:
        Client(base).create_study(f"{name}-http", sampler="random")

        def remote() -> object:
            c = Client(base)
            opened.append(c)
            return c.load_study(f"{name}-http")

        http, asks = run(remote)
        for c in opened:
            c.close()
    p99 = statistics.quantiles(asks, n=100)[98] * 1e3
    print(
        f"in-process {local:.0f}/s, HTTP {http:.0f}/s: {http / local:.2f}x (target >= 0.8x {verdict(http / local >= 0.8)}); "
        f"ask p50 {statistics.median(asks) * 1e3:.1f} ms, p99 {p99:.1f} ms (target < 100 ms {verdict(p99 < 100)})"
    )


# ---- cold start -----------------------------------------------------------------------------

COLD = r"""
import sys, time, warnings
warnings.filterwarnings("ignore")
kind, url, name = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, sys.argv[4])
from storage import DISTS, SPACE
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Imports are not what is measured: what either side imports on first use, imported here.
import numpy.random, sqlalchemy.dialects.sqlite  # noqa: E401,F401
if kind == "optuna":
    import optuna.storages._rdb.models  # noqa: F401
    t0 = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.TPESampler(multivariate=True, constant_liar=True))
    study.ask(DISTS)
else:
    from studyhall import Orchestrator
    import studyhall.optimizer.study  # imports are not what is measured
    t0 = time.perf_counter()
    study = Orchestrator(url).load_study(name, sampler="tpe")
    study.ask(SPACE)
print(time.perf_counter() - t0)
"""


def part_cold(url: str, n_trials: int) -> None:
    print(f"\n== a fresh process's first TPE trial in a study of {n_trials:,} trials (imports not counted)")
    name = f"cold-{uuid.uuid4().hex[:8]}"
    study = Orchestrator(url).create_study(name, sampler="random")
    for _ in range(n_trials):
        t = study.ask(SPACE)
        study.tell(t, value(t.params), user_attrs={"note": "x" * 40})
    times: dict[str, list[float]] = {"optuna": [], "studyhall": []}
    for _ in range(3):
        for kind in times:
            out = subprocess.run(
                [sys.executable, "-c", COLD, kind, url, name, str(Path(__file__).parent)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
            times[kind].append(float(out.strip().splitlines()[-1]))
    o, s = statistics.median(times["optuna"]) * 1e3, statistics.median(times["studyhall"]) * 1e3
    print(
        f"RDBStorage {o:.0f} ms, studyhall {s:.0f} ms (range {min(times['studyhall']) * 1e3:.0f}-"
        f"{max(times['studyhall']) * 1e3:.0f}; target <= 200 ms {verdict(s <= 200)})"
    )


# ---- dropped connections --------------------------------------------------------------------


@contextlib.contextmanager
def killing(backend: str, admin_url: str, tag: str, every_s: float = 0.7) -> Iterator[list[int]]:
    """Kill the benchmark's own connections (found by ``tag``) every ``every_s`` seconds."""
    killed = [0]
    stop = threading.Event()
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def loop() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception), engine.connect() as c:
                if backend == "postgresql":
                    rows = c.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE application_name = '{tag}' AND pid <> pg_backend_pid()"
                    ).all()
                    killed[0] += len(rows)
                else:
                    ids = [
                        r[0]
                        for r in c.exec_driver_sql(
                            f"SELECT id FROM information_schema.processlist WHERE db = '{tag}' AND id <> CONNECTION_ID()"
                        )
                    ]
                    for i in ids:
                        with contextlib.suppress(Exception):
                            c.exec_driver_sql(f"KILL {i}")
                    killed[0] += len(ids)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield killed
    finally:
        stop.set()
        th.join()
        engine.dispose()


def part_chaos(pg: str | None, mysql: str | None, procs: int = 4, n_each: int = 120) -> None:
    print(f"\n== connections killed every 0.7 s while {procs} processes ask and tell {n_each} trials each")
    for backend, base in (("postgresql", pg), ("mysql", mysql)):
        if base is None:
            continue
        name = f"chaos-{uuid.uuid4().hex[:8]}"
        if backend == "postgresql":
            tag = f"studyhall_chaos_{uuid.uuid4().hex[:6]}"
            url = f"{base}&application_name={tag}"
            admin = base.split("?")[0]
        else:
            url, tag, admin = base, base.rsplit("/", 1)[1], base.rsplit("/", 1)[0] + "/test"
        Orchestrator(url).create_study(name, sampler="random")
        with killing(backend, admin, tag) as killed:
            _, errors, tails = run_processes("studyhall", url, name, procs, n_each)
        trials = Orchestrator(url).load_study(name).trials()
        states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "RUNNING", "FAIL", "WAITING")}
        ok = len(trials) == procs * n_each and states["RUNNING"] == 0 and errors == 0
        print(
            f"{backend:<11} {killed[0]} connections killed; {len(trials)} trials {states}; errors {errors}: "
            f"{verdict(ok)}",
            flush=True,
        )
        for tail in tails[:2]:
            print("   ", tail.strip().replace("\n", "\n    "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", default="single,processes,optimize,service,cold,chaos", help="parts to run, comma-separated"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, SQLite only")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="studyhall-storage-bench-"))
    backends: dict[str, Callable[[], str]] = {"sqlite": lambda: f"sqlite:///{tmp / uuid.uuid4().hex[:8]}.db"}
    pg = mysql = None
    if not args.quick:
        pg, mysql = scratch_schema_url(), scratch_mysql_url()
        if pg:
            backends["postgresql"] = lambda: pg  # type: ignore[return-value]
        if mysql:
            backends["mysql"] = lambda: mysql  # type: ignore[return-value]
    try:
        if "single" in parts:
            part_single(backends, 60 if args.quick else 300, tmp)
        if "processes" in parts:
            part_processes(backends, 4, 20 if args.quick else 75)
        if "optimize" in parts:
            part_optimize(
                {k: v for k, v in backends.items() if k != "mysql"},
                [4] if args.quick else [4, 8, 16],
                4 if args.quick else 25,
            )
        if "service" in parts:
            part_service(backends["sqlite"](), 80 if args.quick else 400)
        if "cold" in parts:
            part_cold(backends["sqlite"](), 300 if args.quick else 3000)
        if "chaos" in parts and not args.quick:
            part_chaos(pg, mysql)
    finally:
        if pg:
            drop_scratch_schema(pg)
        if mysql:
            drop_scratch_mysql(mysql)


if __name__ == "__main__":
    main()
