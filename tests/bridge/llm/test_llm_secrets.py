"""The API key stays out of tracebacks that capture locals, and reaches pool workers in memory only."""

from __future__ import annotations

import gc
import pickle
import socket
import traceback
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from studyhall.bridge import FakeProvider, InvalidRequest, LLMClient, StudyhallError, WorkerPool

# Module-level, not a local of the test: the test's own frame is in every traceback.
KEY = f"sk-frames-{uuid.uuid4().hex}"
Q = [{"role": "user", "content": "hello"}]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _frames(exc: BaseException) -> Iterator[FrameType]:
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next


def _shows_key(value: Any, depth: int = 0) -> bool:
    """Whether the key is in ``value``, its repr, or (recursively) the containers it is."""
    if isinstance(value, str):
        return KEY in value
    if isinstance(value, (bytes, bytearray)):
        return KEY.encode() in value
    try:
        if KEY in repr(value):
            return True
    except Exception:  # noqa: BLE001 - a repr that fails shows nothing
        pass
    if depth < 4:
        if isinstance(value, dict):
            return any(_shows_key(k, depth + 1) or _shows_key(v, depth + 1) for k, v in value.items())
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(_shows_key(v, depth + 1) for v in value)
    return False


def _assert_no_key_in_any_frame(exc: BaseException) -> None:
    frames = list(_frames(exc))
    assert any(f.f_code.co_name == "_post" for f in frames), "the failure must pass through the request itself"
    for frame in frames:
        for name, value in frame.f_locals.items():
            assert not _shows_key(value), f"{frame.f_code.co_qualname} has the key in its local {name!r}"
    text = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    assert "_post" in text and KEY not in text
    # rich's show_locals: what it would print next to each frame (its pretty-printed
    # locals, without the seconds of syntax highlighting a full rendering costs).
    rich_traceback = pytest.importorskip("rich.traceback")
    trace = rich_traceback.Traceback.extract(type(exc), exc, exc.__traceback__, show_locals=True)
    shown = [
        (frame.name, name, node.render(max_width=240))
        for stack in trace.stacks
        for frame in stack.frames
        for name, node in (frame.locals or {}).items()
    ]
    assert any(where == "_post" for where, _, _ in shown)
    assert not [(where, name) for where, name, text in shown if KEY in text]


def test_a_request_that_times_out_shows_the_key_in_no_frame() -> None:
    # The provider checks the key, then takes longer than the attempt may: the
    # ReadTimeout is raised inside httpx, under the client's request function.
    with FakeProvider(rpm=None, tpm=None, latency_s=0.5, api_key=KEY) as fp:
        lm = LLMClient("fake-model", base_url=fp.base_url, api_key=KEY, attempt_timeout=0.05, max_retries=0)
        with pytest.raises(StudyhallError) as info:
            lm.chat(Q)
        lm.close()
    _assert_no_key_in_any_frame(info.value)


def test_a_refused_connection_shows_the_key_in_no_frame() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lm = LLMClient("fake-model", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(StudyhallError) as info:
        lm.chat(Q)
    lm.close()
    _assert_no_key_in_any_frame(info.value)


def test_the_key_still_authenticates_and_never_pickles() -> None:
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key=KEY) as fp:
        with LLMClient("fake-model", base_url=fp.base_url, api_key=KEY) as lm:
            assert lm.chat(Q).text
            assert KEY.encode() not in pickle.dumps(lm)
        assert fp.stats()["bad_requests"] == 0


# ---------------------------------------------------------------- the key reaches pool workers (issue 13 item 11)

POOL_KEY = f"sk-pool-{uuid.uuid4().hex}"


def _ask(lm: LLMClient) -> str:
    return lm.chat(Q, max_tokens=8).text


def test_a_pickled_client_carries_no_key_and_a_pool_worker_gets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key=POOL_KEY) as fp:
        lm = LLMClient("fake-model", base_url=fp.base_url, api_key=POOL_KEY, max_retries=0)
        blob = pickle.dumps(lm)
        assert POOL_KEY.encode() not in blob
        with WorkerPool(min_workers=1, max_workers=2) as pool:
            # as an argument, and inside a closure (cloudpickled by value)
            assert "fake answer" in pool.submit(_ask, lm).result(timeout=30)
            assert "fake answer" in pool.submit(lambda: lm.chat(Q, max_tokens=8).text).result(timeout=30)
            # a client made after the workers started: its key goes before the task that carries it
            late = LLMClient("fake-model", base_url=fp.base_url, api_key=POOL_KEY, max_retries=0)
            assert "fake answer" in pool.submit(_ask, late).result(timeout=30)
        stats = fp.stats()
    assert stats["completed"] == 3 and stats["bad_requests"] == 0, stats


def test_optimize_workers_authenticate_with_the_api_key_argument(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, study_name: str
) -> None:
    from studyhall.optimizer import Orchestrator

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key=POOL_KEY) as fp:
        lm = LLMClient("fake-model", base_url=fp.base_url, api_key=POOL_KEY, max_retries=0)

        def objective(trial: Any) -> float:
            trial.suggest_float("x", 0, 1)
            return float(len(lm.chat(Q, max_tokens=8).text))

        study = Orchestrator(sqlite_url).create_study(study_name, direction="maximize", sampler="random", seed=0)
        report = study.optimize(objective, n_trials=4, workers=2, progress=False)
        stats = fp.stats()
    assert report.completed == 4, report
    assert stats["completed"] == 4 and stats["bad_requests"] == 0, stats


def test_a_client_whose_key_cannot_be_found_refuses_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, api_key=POOL_KEY) as fp:
        lm = LLMClient("fake-model", base_url=fp.base_url, api_key=POOL_KEY, max_retries=0)
        blob = pickle.dumps(lm)
        del lm
        gc.collect()  # the key's only holder is gone: as in a process no pool sent it to
        copy = pickle.loads(blob)
        with pytest.raises(InvalidRequest, match=r"api_key=.*OPENAI_API_KEY|OPENAI_API_KEY.*api_key="):
            copy.chat(Q)
        assert fp.stats()["requests"] == 0  # nothing went out unauthenticated
        monkeypatch.setenv("OPENAI_API_KEY", POOL_KEY)  # the environment still serves, as before
        assert copy.chat(Q).text
    # A client that never had a key sends none, as before (local servers need none).
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0) as open_fp:
        monkeypatch.delenv("OPENAI_API_KEY")
        keyless = pickle.loads(pickle.dumps(LLMClient("fake-model", base_url=open_fp.base_url)))
        assert keyless.chat(Q).text
