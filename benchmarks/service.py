"""ask+tell round trips over HTTP (`studyhall serve`, real uvicorn on loopback) vs in-process.

Both sides use the same SQLite file and the same sampler; each scenario gets a
fresh study, so neither side pays for the other's trials. Prints round trips/s
with 1 and 8 concurrent clients and HTTP's rate as a fraction of in-process.

    python benchmarks/service.py            # 180 round trips per scenario, random + TPE
    python benchmarks/service.py --quick    # 40 round trips, random only
    python benchmarks/service.py --storage postgresql+psycopg://postgres@127.0.0.1/test
    python benchmarks/service.py --serve "--workers 2" --serve "--workers 1"   # server variants, alternated
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna

from _serve import serve
from studyhall.optimizer import Client, Float, Int, Orchestrator

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
SPACE = {"x": Float(-5.0, 5.0), "y": Float(0.0, 1.0), "k": Int(1, 8)}


def loop(study: object, n: int, asks: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        t = study.ask(SPACE)  # type: ignore[attr-defined]
        asks.append(time.perf_counter() - t0)
        study.tell(t, (t.params["x"] - 1) ** 2 + t.params["y"])  # type: ignore[attr-defined]


def rate(n_total: int, clients: int, make_study: Callable[[], object], asks: list[float]) -> float:
    """Round trips per second with ``clients`` threads sharing ``n_total`` round trips; ``asks`` gets each ask's seconds."""
    studies = [make_study() for _ in range(clients)]
    per = n_total // clients
    threads = [threading.Thread(target=loop, args=(s, per, asks)) for s in studies]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return per * clients / (time.perf_counter() - t0)


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` in milliseconds (nearest rank)."""
    ordered = sorted(xs)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 round trips per scenario, random sampler only")
    ap.add_argument("-n", type=int, default=None, help="round trips per scenario (default 180, 40 with --quick)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternate in-process and HTTP this many times; report medians"
    )
    ap.add_argument("--storage", default=None, help="storage URL (default: a fresh SQLite file)")
    ap.add_argument("--sampler", action="append", choices=["random", "tpe"], help="only this sampler (repeatable)")
    ap.add_argument("--clients", type=int, action="append", help="only this many clients (repeatable; default 1 and 8)")
    ap.add_argument(
        "--serve",
        action="append",
        help="`studyhall serve` options of one server variant, e.g. '--workers 2' (repeatable: the variants "
        "take turns with in-process in each round; default: serve's defaults)",
    )
    args = ap.parse_args()
    n = args.n or (40 if args.quick else 180)
    rounds = 1 if args.quick else max(1, args.rounds)
    samplers = args.sampler or (["random"] if args.quick else ["random", "tpe"])
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        orch = Orchestrator(url)
        print(f"ask+tell round trips/s, {n} per scenario in {rounds} alternating round(s), storage {orch.storage!r}")
        print(
            f"{'sampler':8} {'clients':>7} {'in-process':>11} {'HTTP':>8} {'HTTP/in-process':>16}"
            f" {'ask p50/p99 ms in-process':>26} {'HTTP':>12}"
        )
        variants = args.serve or [""]
        with contextlib.ExitStack() as stack:
            bases = [stack.enter_context(serve(url, *v.split())) for v in variants]
            remote = stack.enter_context(Client(bases[0]))
            made: list[str] = []  # deleted at the end: SQLite reuses a deleted study's ids, which other processes cache
            for smp in samplers:
                for clients in args.clients or (1, 8):
                    name = f"bench-{uuid.uuid4().hex[:8]}"
                    orch.create_study(f"{name}-local", sampler=smp, seed=0)
                    made.append(f"{name}-local")
                    for i in range(len(bases)):
                        remote.create_study(f"{name}-http{i}", sampler=smp, seed=0)
                        made.append(f"{name}-http{i}")
                    opened: list[Client] = []

                    def remote_study(i: int, name: str = name, opened: list[Client] = opened) -> object:
                        c = Client(bases[i])
                        opened.append(c)
                        return c.load_study(f"{name}-http{i}")

                    local_rates: list[float] = []
                    http_rates: list[list[float]] = [[] for _ in bases]
                    local_asks: list[float] = []
                    http_asks: list[list[float]] = [[] for _ in bases]
                    for _ in range(rounds):  # alternating, so that load from elsewhere hits every side alike
                        local_rates.append(
                            rate(n // rounds, clients, lambda name=name: orch.load_study(f"{name}-local"), local_asks)
                        )
                        for i in range(len(bases)):
                            http_rates[i].append(rate(n // rounds, clients, lambda i=i: remote_study(i), http_asks[i]))
                    for c in opened:
                        c.close()
                    local = statistics.median(local_rates)
                    for i, variant in enumerate(variants):
                        http = statistics.median(http_rates[i])
                        lat = [
                            f"{percentile(a, 0.5):.1f}/{percentile(a, 0.99):.1f}" for a in (local_asks, http_asks[i])
                        ]
                        spread = f"{min(http_rates[i]):.0f}-{max(http_rates[i]):.0f}"
                        print(
                            f"{smp:8} {clients:>7} {local:>11.1f} {http:>8.1f} {http / local:>15.2f}x {lat[0]:>26} "
                            f"{lat[1]:>12}  HTTP range {spread} {variant}",
                            flush=True,
                        )
            for made_name in made:
                orch.delete_study(made_name)  # leave a shared database as it was


if __name__ == "__main__":
    main()
