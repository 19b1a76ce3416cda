"""Structured events: record, query (SQL ``where`` on three databases), trees, types, workers."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from studyhall.optimizer import Float, Orchestrator, events
from studyhall.storage import InvalidRequest, connect


@dataclasses.dataclass
class Retrieved:
    query: str
    k: int
    scores: list[float]
    model: str | None = None


def test_children_inherit_the_trace_and_paths_order_the_tree(store):
    root = events.record(store, "run", {"q": "2+2?"})
    child = events.record(store, "retrieve", {"k": 3}, parent_id=root)
    grandchild = events.record(store, "rank", {}, parent_id=child)
    r, c, g = (events.get(store, i) for i in (root, child, grandchild))
    assert len(r.correlation_id) == 32 and c.correlation_id == g.correlation_id == r.correlation_id
    assert (r.depth, c.depth, g.depth) == (0, 1, 2) and g.parent_id == child
    assert g.path == f"{root:010d}.{child:010d}.{grandchild:010d}"
    other = events.record(store, "run", {}, correlation_id="my-trace")
    assert events.get(store, other).correlation_id == "my-trace"
    with pytest.raises(InvalidRequest, match="does not exist"):
        events.record(store, "x", {}, parent_id=10**9)
    with pytest.raises(InvalidRequest, match="differs from its parent"):
        events.record(store, "x", {}, parent_id=root, correlation_id="elsewhere")


def test_query_filters_by_trace_type_trial_time_and_limit(store, study_name):
    study = Orchestrator(store).create_study(study_name)
    t = study.ask({"x": Float(0, 1)})
    before = time.time()
    ids = [events.record(store, "llm.call", {"i": i, "status": 429 if i % 3 == 0 else 200}, trial=t) for i in range(7)]
    root = events.get(store, ids[0])
    other = events.record(store, "llm.call", {"i": 99, "status": 200})
    got = events.query(store, trial=t)
    assert [e.id for e in got] == ids and all(e.trial_id == t.trial_id and e.study_id == study._study_id for e in got)
    assert [e.data["i"] for e in events.query(store, trial=t, where={"status": 429})] == [0, 3, 6]
    assert [e.id for e in events.query(store, event_type="llm.call", trial=t, limit=2, newest_first=True)] == ids[
        :-3:-1
    ]
    assert events.query(store, correlation_id=root.correlation_id) == [root]
    late = events.query(
        store, event_type="llm.call", since=before, until=time.time(), data_filter=lambda d: d["i"] >= 5
    )
    assert [e.data["i"] for e in late] == [5, 6, 99] and late[-1].id == other
    assert [e.data["i"] for e in events.query(store, trial=t, data_filter=lambda d: d["i"] % 2 == 1, limit=2)] == [1, 3]
    assert events.query(store, trial=t, limit=0) == []
    with pytest.raises(InvalidRequest, match="limit"):
        events.query(store, limit=-1)


def test_a_trial_id_is_tied_to_its_own_databases_study(sqlite_db_url, tmp_path):
    # Two databases in one process, both with a trial id 1, in studies of different ids.
    a = Orchestrator(sqlite_db_url).create_study("a")
    a_trial = a.ask({"x": Float(0, 1)})
    b_url = f"sqlite:///{tmp_path / 'b.db'}"
    Orchestrator(b_url).create_study("b-empty")
    b = Orchestrator(b_url).create_study("b")
    b_trial = b.ask({"x": Float(0, 1)})
    assert a_trial.trial_id == b_trial.trial_id and a._study_id != b._study_id
    on_a = events.record(sqlite_db_url, "x", {}, trial=a_trial.trial_id)
    on_b = events.record(b_url, "x", {}, trial=b_trial.trial_id)  # the id alone: no study to read it from
    assert events.get(sqlite_db_url, on_a).study_id == a._study_id
    assert events.get(b_url, on_b).study_id == b._study_id


def test_where_is_pushed_into_sql_and_type_exact(store):
    corr = f"where-{os.getpid()}-{time.time_ns()}"
    rows = [
        {"name": "Answer", "n": 3, "f": 1.5, "ok": True, "none": None, "nested": {"model": "a"}},
        {"name": "answer", "n": 3.0, "f": 2, "ok": False, "nested": {"model": "b"}},
        {"name": "3", "n": "3", "ok": 1, "none": 0},
    ]
    root = events.record(store, "w", rows[0], correlation_id=corr)
    ids = [root] + [events.record(store, "w", r, parent_id=root) for r in rows[1:]]

    def ids_where(**where):  # type: ignore[no-untyped-def]
        return [ids.index(e.id) for e in events.query(store, correlation_id=corr, where=where)]

    assert ids_where(name="Answer") == [0]  # case-sensitive, also on MariaDB
    assert ids_where(name="3") == [2]
    assert ids_where(n=3) == [0, 1]  # numbers compare as numbers: 3 == 3.0, not "3"
    assert ids_where(f=2) == [1] and ids_where(f=1.5) == [0]
    assert ids_where(ok=True) == [0] and ids_where(ok=False) == [1]  # not the number 1
    assert ids_where(none=None) == [0]
    assert [ids.index(e.id) for e in events.query(store, correlation_id=corr, where={("nested", "model"): "b"})] == [1]
    assert ids_where(name="answer", n=3) == [1]
    assert ids_where(missing="x") == []
    with pytest.raises(InvalidRequest, match="where values"):
        events.query(store, where={"x": [1, 2]})
    with pytest.raises(InvalidRequest, match="where keys"):
        events.query(store, where={'a"b': 1})


@pytest.fixture(params=["sqlite", "postgresql"])
def tree_store(request):
    return connect(str(request.getfixturevalue(f"{request.param}_url")))


def test_trace_tree_of_depth_5_and_width_100(tree_store):
    st = tree_store
    root = events.record(st, "root", {"i": 0})
    corr = events.get(st, root).correlation_id
    wide = [events.record(st, "leaf", {"i": i}, parent_id=root) for i in range(100)]
    chain = [root]
    for d in range(1, 5):
        chain.append(events.record(st, "deep", {"d": d}, parent_id=chain[-1]))
    stray = events.record(st, "second-root", {}, correlation_id=corr)
    roots = events.trace_tree(st, corr)
    assert [n.event.id for n in roots] == [root, stray]
    top = roots[0]
    assert [c.event.id for c in top.children] == wide + [chain[1]]  # in the order they happened
    node = top
    for depth in range(1, 5):
        (node,) = [c for c in node.children if c.event.event_type == "deep"]
        assert node.event.depth == depth and node.event.id == chain[depth]
    assert node.children == []
    assert sum(1 for _ in top.walk()) == 1 + 100 + 4


def test_registered_types_check_their_fields():
    events.register("retrieved", Retrieved)
    try:
        ok = events.validate("retrieved", {"query": "q", "k": 3, "scores": [0.5, 1]})
        assert ok == {"query": "q", "k": 3, "scores": [0.5, 1], "model": None}  # default filled in
        assert events.validate("retrieved", Retrieved("q", 2, [1.0], "m"))["model"] == "m"
        for bad, msg in (
            ({"query": "q", "scores": []}, "missing field 'k'"),
            ({"query": "q", "k": 1, "scores": [], "extra": 1}, "no field"),
            ({"query": "q", "k": "3", "scores": []}, "field 'k': expected int"),
            ({"query": "q", "k": True, "scores": []}, "field 'k': expected int"),
            ({"query": "q", "k": 1, "scores": ["x"]}, "item 0: expected float"),
            ({"query": "q", "k": 1, "scores": [], "model": 3}, "field 'model'"),
            ("not a dict", "dict or a dataclass"),
        ):
            with pytest.raises(InvalidRequest, match=msg):
                events.validate("retrieved", bad)

        @dataclasses.dataclass
        class Other:
            x: int

        with pytest.raises(InvalidRequest, match="registered with Retrieved"):
            events.validate("retrieved", Other(1))
        assert "retrieved" in events.registered()
    finally:
        events.unregister("retrieved")
    assert events.validate("retrieved", {"anything": [1, {"goes": None}]})  # unregistered: any JSON dict
    assert events.validate("free", Retrieved("q", 1, []))["k"] == 1
    for bad in ({"x": float("nan")}, {"x": object()}, {1: "int key"}):
        with pytest.raises(InvalidRequest):
            events.validate("free", bad)
    with pytest.raises(InvalidRequest, match="dataclass type"):
        events.register("x", dict)
    with pytest.raises(InvalidRequest, match="event type"):
        events.validate("", {})


def test_record_without_storage_outside_a_worker_is_refused():
    with pytest.raises(InvalidRequest, match="needs a storage"):
        events.record(None, "x", {})
    assert events.handle_worker_message(None, {"not": "ours"}) is False  # type: ignore[arg-type]
    assert events.handle_worker_message(None, ("a", "tuple")) is False  # type: ignore[arg-type]


def test_a_worker_finish_without_an_event_id_is_logged_and_dropped(caplog):
    # It used to escape as a TypeError from int(None) and fail the trial that sent it.
    message = {events.MESSAGE_KEY: "event", "op": "finish", "local_id": None, "data": {}}
    with caplog.at_level("WARNING", logger="studyhall.optimizer.events"):
        assert events.handle_worker_message(None, message) is True  # type: ignore[arg-type]
    assert "names no event id" in caplog.text


def send_events_then_die(n: int) -> None:
    """Pool task: a root, n nested children, a closed span, then SIGKILL before returning."""
    from studyhall.optimizer import events as ev

    root = ev.record(None, "task", {"n": n})
    parent = root
    for i in range(n):
        parent = ev.record(None, "step", {"i": i}, parent_id=parent)
    ev.finish(None, root, {"status": "about to die"})
    os.kill(os.getpid(), signal.SIGKILL)


def test_worker_events_reach_the_parent_and_survive_sigkill(sqlite_url):
    from studyhall.bridge import WorkerCrashed, WorkerPool

    st = connect(sqlite_url)
    with WorkerPool(min_workers=1, max_workers=1) as pool:
        fut = pool.submit(send_events_then_die, 4, on_send=lambda p: events.handle_worker_message(st, p))
        with pytest.raises(WorkerCrashed):
            fut.result(timeout=60)
    roots = events.query(st, event_type="task")
    assert len(roots) == 1 and roots[0].data == {"n": 4, "status": "about to die"}
    tree = events.trace_tree(st, roots[0].correlation_id)
    chain, node = [], tree[0]
    while node.children:
        (node,) = node.children
        chain.append(node.event.data["i"])
    assert chain == [0, 1, 2, 3] and node.event.depth == 4
