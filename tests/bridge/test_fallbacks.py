"""with_fallbacks: first success wins, who served is known, every cause is kept."""

from __future__ import annotations

import pickle
import threading

import pytest

from studyhall import optimizer
from studyhall.bridge import FallbackError, InvalidRequest, StudyhallError, with_fallbacks


def fail(msg: str):
    def fn(*args, **kwargs):
        raise ConnectionError(msg)

    return fn


def test_first_success_wins_and_is_recorded():
    calls = []

    def ok(x, *, y):
        calls.append("ok")
        return x + y

    def never(*a, **k):
        calls.append("never")
        return 0

    chain = with_fallbacks(fail("down"), ok, never, on=ConnectionError)
    assert chain(1, y=2) == 3
    assert calls == ["ok"]
    assert chain.served_by == 1 and chain.served_by_name == "test_first_success_wins_and_is_recorded.<locals>.ok"
    served = chain.call(5, y=5)
    assert (served.value, served.index) == (10, 1)
    assert [type(e) for e in served.errors] == [ConnectionError]


def test_all_failing_raises_fallback_error_with_every_cause():
    chain = with_fallbacks(fail("a is down"), fail("b is down"), names=["a", "b"])
    with pytest.raises(FallbackError) as info:
        chain()
    err = info.value
    assert isinstance(err, StudyhallError)
    assert [str(e) for e in err.errors] == ["a is down", "b is down"]
    assert err.__cause__ is err.errors[-1]
    assert "[0] a: ConnectionError: a is down" in str(err) and "[1] b:" in str(err)
    assert chain.served_by is None
    copy = pickle.loads(pickle.dumps(err))
    assert [str(e) for e in copy.errors] == ["a is down", "b is down"]


def test_errors_outside_on_propagate_at_once():
    def bug():
        raise KeyError("a bug, not an outage")

    chain = with_fallbacks(bug, lambda: "never reached", on=(ConnectionError,))
    with pytest.raises(KeyError):
        chain()


def test_served_by_is_per_thread():
    gate = threading.Event()

    def slow_ok():
        gate.wait(5)
        return "slow"

    def first(kind):
        if kind == "fail":
            raise ConnectionError("x")
        return slow_ok()

    chain = with_fallbacks(first, lambda kind: "backup", on=ConnectionError)
    seen = {}

    def run(kind):
        chain(kind)
        seen[kind] = chain.served_by

    t = threading.Thread(target=run, args=("ok",))
    t.start()
    run("fail")
    gate.set()
    t.join(5)
    assert seen == {"fail": 1, "ok": 0}


def test_validation():
    with pytest.raises(InvalidRequest):
        with_fallbacks()
    with pytest.raises(InvalidRequest):
        with_fallbacks(lambda: 1, "not callable")
    with pytest.raises(InvalidRequest):
        with_fallbacks(lambda: 1, on=ValueError("instance"))
    with pytest.raises(InvalidRequest):
        with_fallbacks(lambda: 1, names=["a", "b"])


def test_exported_from_optimizer_too():
    assert optimizer.with_fallbacks is with_fallbacks
    assert optimizer.FallbackError is FallbackError
    assert "with_fallbacks" in optimizer.__all__ and "FallbackError" in optimizer.__all__
