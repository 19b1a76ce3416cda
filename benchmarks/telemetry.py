"""Telemetry costs, each beside what it competes with, on a SQLite file (PostgreSQL with --pg).

1. ``study.tell(t, scores=<1,000 scores>)`` vs ``study.tell(t, value)`` (and raw Optuna's
   tell): the price of keeping a distribution, a note and the Prometheus series
   (target <= 1.3x the plain tell); also with 40 LLM latencies and a counter besides,
   what an LLM trial tells; and the bytes the 1,000 pass/fail scores take in the database.
2. ``events.record`` vs a bare INSERT of the same row.
3. At 100,000 events: ``events.query`` with ``where`` pushed into SQL vs the same
   filter in Python (``data_filter``); ``trace_tree`` of one 1,000-event trace (one
   query ordered by path; target < 50 ms on SQLite) vs a recursive CTE over
   parent_id and vs walking parent_id one query per node.

    python benchmarks/telemetry.py            # 300 tells each, 100,000 events
    python benchmarks/telemetry.py --quick    # 40 tells, 10,000 events
    python benchmarks/telemetry.py --pg       # PostgreSQL too
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa

from _pg import drop_scratch_schema, scratch_schema_url
from studyhall.optimizer import Float, Orchestrator, events
from studyhall.storage import connect
from studyhall.storage._schema import events as events_table
from studyhall.storage._schema import trial_metrics

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage")  # raw Optuna ask/tell beside studyhall

SPACE = {"x": Float(0.0, 1.0)}
TRACE_SIZE = 1000


def timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of ``fn`` in ms."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


# ---- 1. tell ------------------------------------------------------------------------------


def bench_tell(url: str, n: int, n_scores: int) -> None:
    rng = np.random.default_rng(0)
    orch = Orchestrator(url)
    plain = orch.create_study(f"plain-{uuid.uuid4().hex[:6]}", direction="maximize", sampler="random")
    dist = orch.create_study(f"dist-{uuid.uuid4().hex[:6]}", direction="maximize", sampler="random")
    llm = orch.create_study(f"llm-{uuid.uuid4().hex[:6]}", direction="maximize", sampler="random")
    raw = optuna.create_study(
        storage=orch.storage.optuna,
        study_name=f"raw-{uuid.uuid4().hex[:6]}",
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction="maximize",
    )
    dists = {"x": SPACE["x"].distribution()}
    t_plain, t_dist, t_llm, t_raw = [], [], [], []
    for _ in range(n):  # interleaved, so that drift (file growth, other load) hits all three alike
        t = plain.ask(SPACE)
        t0 = time.perf_counter()
        plain.tell(t, float(t.params["x"]))
        t_plain.append(time.perf_counter() - t0)

        t = dist.ask(SPACE)
        scores = (rng.random(n_scores) < t.params["x"]).astype(float)
        t0 = time.perf_counter()
        dist.tell(t, scores=scores)
        t_dist.append(time.perf_counter() - t0)

        t = llm.ask(SPACE)
        scores = (rng.random(n_scores) < t.params["x"]).astype(float)
        latency = rng.lognormal(-1.0, 0.5, 40)
        t0 = time.perf_counter()
        llm.tell(t, scores=scores, metrics={"llm.latency_s": latency}, user_attrs={"llm.calls": 40})
        t_llm.append(time.perf_counter() - t0)

        rt = raw.ask(dists)
        t0 = time.perf_counter()
        raw.tell(rt, float(rt.params["x"]))
        t_raw.append(time.perf_counter() - t0)
    mp, md, ml, mr = (statistics.median(x) * 1e3 for x in (t_plain, t_dist, t_llm, t_raw))
    ratio = sum(t_dist) / sum(t_plain)
    flag = "ok" if ratio <= 1.3 else "> 1.3"
    print(
        f"  tell, median ms: optuna value {mr:.3f} | studyhall value {mp:.3f} | {n_scores} scores {md:.3f} "
        f"| {n_scores} scores + 40 latencies + a counter {ml:.3f}"
    )
    print(
        f"  tell with {n_scores} scores / tell with a value: {ratio:.2f}x {flag} (of the medians {md / mp:.2f}x)   "
        f"(with the latencies and counter too: {sum(t_llm) / sum(t_plain):.2f}x; "
        f"studyhall value / optuna value: {sum(t_plain) / sum(t_raw):.2f}x)"
    )
    query = sa.select(sa.func.avg(sa.func.length(trial_metrics.c.samples))).where(
        trial_metrics.c.study_id == dist._study_id, trial_metrics.c.name == "score"
    )
    with orch.storage.engine.connect() as conn:
        stored = float(conn.execute(query).scalar_one())
    print(f"  {n_scores} pass/fail scores stored in {stored:,.0f} bytes ({8 * n_scores:,} as float64)")


# ---- 2. record ----------------------------------------------------------------------------


def bench_record(st: Any, n: int) -> None:
    root = events.record(st, "bench.root", {"i": 0})
    t0 = time.perf_counter()
    for i in range(n):
        events.record(st, "bench.step", {"i": i, "status": 200}, parent_id=root)
    ours = time.perf_counter() - t0

    def insert(conn: sa.Connection, i: int) -> None:
        conn.execute(
            sa.insert(events_table).values(
                correlation_id="bare",
                event_type="bench.bare",
                parent_id=None,
                path=f"bare{i}",
                depth=0,
                created_at=time.time(),
                data={"i": i, "status": 200},
            )
        )

    t0 = time.perf_counter()
    for i in range(n):
        st.transaction(lambda conn, i=i: insert(conn, i))
    bare = time.perf_counter() - t0
    print(
        f"  record: {n / ours:.0f} events/s ({ours / n * 1e3:.2f} ms) vs bare INSERT {n / bare:.0f}/s: "
        f"{ours / bare:.2f}x (a parent's path lookup and the path update ride in the same transaction)"
    )


# ---- 3. queries at scale ------------------------------------------------------------------


def populate(st: Any, n_events: int) -> list[str]:
    """n_events in traces of TRACE_SIZE: a root, 20 spans, the rest steps under the spans (depth 2).

    Written with multi-row INSERTs and precomputed ids and paths (record() writes
    one transaction per event; 100,000 of them would be the whole time budget).
    """
    with st.engine.begin() as conn:
        start = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events_table.c.id), 0))).scalar_one()) + 1
    rng = random.Random(0)
    corrs, rows, next_id = [], [], start
    now = time.time() - n_events
    for _ in range(n_events // TRACE_SIZE):
        corr = uuid.uuid4().hex
        corrs.append(corr)
        root = next_id
        rows.append(_row(root, corr, "run", None, f"{root:010d}", 0, now, {"name": "run"}))
        next_id += 1
        spans = []
        for s in range(20):
            sid = next_id
            next_id += 1
            spans.append((sid, f"{root:010d}.{sid:010d}"))
            rows.append(_row(sid, corr, "trace.span", root, spans[-1][1], 1, now, {"name": "Action", "i": s}))
        for _ in range(TRACE_SIZE - 21):
            pid, ppath = rng.choice(spans)
            eid = next_id
            next_id += 1
            status = 429 if rng.random() < 0.05 else 200
            rows.append(
                _row(
                    eid,
                    corr,
                    "llm.call",
                    pid,
                    f"{ppath}.{eid:010d}",
                    2,
                    now,
                    {"name": "Observation", "status": status, "model": rng.choice(["a", "b"])},
                )
            )
        now += TRACE_SIZE
        if len(rows) >= 20_000:
            _flush(st, rows)
    _flush(st, rows)
    return corrs


def _row(eid: int, corr: str, kind: str, parent: int | None, path: str, depth: int, t: float, data: dict) -> dict:
    return {
        "id": eid,
        "correlation_id": corr,
        "event_type": kind,
        "parent_id": parent,
        "path": path,
        "depth": depth,
        "study_id": None,
        "trial_id": None,
        "created_at": t + eid * 1e-3,
        "data": data,
    }


def _flush(st: Any, rows: list[dict]) -> None:
    if not rows:
        return
    with st.engine.begin() as conn:
        conn.execute(sa.insert(events_table), rows)
    rows.clear()
    if st.dialect == "postgresql":  # explicit ids leave the sequence behind
        with st.engine.begin() as conn:
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('studyhall_events', 'id'), (SELECT MAX(id) FROM studyhall_events))"
            )


def cte_tree(st: Any, root_id: int) -> int:
    """The competitor: a recursive CTE down parent_id, then the tree built in Python."""
    sql = sa.text(
        "WITH RECURSIVE t(id, parent_id, data) AS ("
        " SELECT id, parent_id, data FROM studyhall_events WHERE id = :root"
        " UNION ALL SELECT e.id, e.parent_id, e.data FROM studyhall_events e JOIN t ON e.parent_id = t.id)"
        " SELECT id, parent_id, data FROM t"
    )
    with st.engine.connect() as conn:
        rows = conn.execute(sql, {"root": root_id}).all()
    # the same work trace_tree does: decode every event's data, link children to parents
    nodes: dict[int, dict[str, Any]] = {}
    for eid, parent, data in rows:
        nodes[eid] = {"data": json.loads(data) if isinstance(data, str) else data, "parent": parent, "children": []}
    for node in nodes.values():
        if node["parent"] in nodes:
            nodes[node["parent"]]["children"].append(node)
    return len(rows)


def adjacency_tree(st: Any, root_id: int) -> int:
    """The naive competitor: one query per node for its children (N+1 queries)."""
    n, stack = 0, [root_id]
    with st.engine.connect() as conn:
        while stack:
            node = stack.pop()
            n += 1
            kids = conn.execute(sa.select(events_table.c.id).where(events_table.c.parent_id == node)).scalars().all()
            stack.extend(kids)
    return n


def bench_queries(st: Any, n_events: int) -> None:
    t0 = time.perf_counter()
    corrs = populate(st, n_events)
    print(f"  populated {n_events:,} events in {len(corrs)} traces of {TRACE_SIZE} ({time.perf_counter() - t0:.1f} s)")
    if st.dialect == "postgresql":
        with st.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE studyhall_events")
    corr = corrs[len(corrs) // 2]
    root_id = events.trace_tree(st, corr)[0].event.id
    with st.engine.connect() as conn:  # the adjacency walk needs parent_id indexed to be fair
        conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS bench_parent ON studyhall_events (parent_id)")
        conn.commit()

    tree_ms = timed(lambda: events.trace_tree(st, corr))
    size = sum(1 for _ in events.trace_tree(st, corr)[0].walk())
    cte_ms = timed(lambda: cte_tree(st, root_id))
    adj_ms = timed(lambda: adjacency_tree(st, root_id), repeat=1)
    flag = "ok" if tree_ms < 50 or st.dialect != "sqlite" else "> 50 ms"
    print(
        f"  trace_tree of a {size}-event trace: {tree_ms:.1f} ms {flag} | recursive CTE {cte_ms:.1f} ms "
        f"({cte_ms / tree_ms:.2f}x) | a query per node {adj_ms:.0f} ms ({adj_ms / tree_ms:.0f}x)"
    )

    trace_ms = timed(lambda: events.query(st, correlation_id=corr))
    print(f"  query(correlation_id=...) -> {TRACE_SIZE} events: {trace_ms:.1f} ms")
    sql_ms = timed(lambda: events.query(st, event_type="llm.call", where={"status": 429, "model": "a"}), repeat=3)
    n_hits = len(events.query(st, event_type="llm.call", where={"status": 429, "model": "a"}))
    py_ms = timed(
        lambda: events.query(
            st, event_type="llm.call", data_filter=lambda d: d.get("status") == 429 and d.get("model") == "a"
        ),
        repeat=3,
    )
    print(
        f"  query(event_type, where={{status: 429, model: 'a'}}) -> {n_hits} of {n_events:,}: {sql_ms:.0f} ms in SQL "
        f"vs {py_ms:.0f} ms filtered in Python ({py_ms / sql_ms:.1f}x)"
    )
    lim_ms = timed(lambda: events.query(st, where={"status": 429}, limit=100, newest_first=True))
    print(f"  query(where={{status: 429}}, limit=100, newest_first=True): {lim_ms:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tells", type=int, default=300)
    ap.add_argument("--scores", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="a tiny run (40 tells, 10,000 events)")
    ap.add_argument("--pg", action="store_true", help="also on PostgreSQL 127.0.0.1:5432")
    args = ap.parse_args()
    n_tells, n_events = (40, 10_000) if args.quick else (args.tells, args.events)

    tmp = Path(tempfile.mkdtemp(prefix="studyhall-bench-"))
    urls = {"sqlite": f"sqlite:///{tmp / 'telemetry.db'}"}
    if args.pg and (url := scratch_schema_url()):
        urls["postgresql"] = url
    for backend, url in urls.items():
        print(f"{backend}:")
        bench_tell(url, n_tells, args.scores)
        st = connect(url)
        bench_record(st, 200 if args.quick else 1000)
        bench_queries(st, n_events)
        if backend == "postgresql":
            drop_scratch_schema(url)


if __name__ == "__main__":
    main()
