"""studyhall.optimizer.services: process-wide registrations, context-scoped overrides, snapshots for workers."""

from __future__ import annotations

import contextvars
import pickle
import threading
import uuid
from collections.abc import Iterator

import pytest

from studyhall.bridge import FakeProvider, LLMClient, current_recorder, recording
from studyhall.optimizer import services
from studyhall.storage import InvalidRequest


@pytest.fixture
def svc_name() -> Iterator[str]:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    yield name
    services.unregister(name)


def test_register_get_unregister(svc_name):
    with pytest.raises(InvalidRequest, match=f"no service named '{svc_name}'"):
        services.get(svc_name)
    services.register(svc_name, 41)
    assert services.get(svc_name) == 41
    services.register(svc_name, 42)  # re-registering replaces
    assert services.get(svc_name) == 42
    services.unregister(svc_name)
    services.unregister(svc_name)  # idempotent
    with pytest.raises(InvalidRequest):
        services.get(svc_name)
    for bad in ("", None, 3):
        with pytest.raises(InvalidRequest):
            services.register(bad, object())


def test_unknown_name_lists_the_registered_ones(svc_name):
    services.register(svc_name, "x")
    with pytest.raises(InvalidRequest, match=svc_name) as info:
        services.get(svc_name + "-typo")
    assert "services.register" in str(info.value)


def test_override_is_scoped_to_the_block_and_the_context(svc_name):
    services.register(svc_name, "real")
    seen_in_plain_thread = []
    with services.override(svc_name, "fake") as obj:
        assert obj == "fake" and services.get(svc_name) == "fake"
        with services.override(svc_name, "inner"):
            assert services.get(svc_name) == "inner"
        assert services.get(svc_name) == "fake"
        # A thread that does not copy the context sees the registration, not the override...
        t = threading.Thread(target=lambda: seen_in_plain_thread.append(services.get(svc_name)))
        t.start()
        t.join()
        # ...one that runs in a copy of the context sees the override.
        ctx = contextvars.copy_context()
        assert ctx.run(services.get, svc_name) == "fake"
    assert services.get(svc_name) == "real"
    assert seen_in_plain_thread == ["real"]


def test_override_without_registration(svc_name):
    with services.override(svc_name, 7):
        assert services.get(svc_name) == 7
    with pytest.raises(InvalidRequest):
        services.get(svc_name)


def test_snapshot_and_restore_carry_overrides_to_a_worker(svc_name):
    services.register(svc_name, {"who": "registered"})
    other = svc_name + "-other"
    with services.override(other, {"who": "override"}):
        snap = services.snapshot()
    assert snap[svc_name] == {"who": "registered"} and snap[other] == {"who": "override"}
    shipped = pickle.loads(pickle.dumps(snap))  # what optimize sends with a task

    def in_worker():
        with services.restore(shipped):
            return services.get(other)["who"], services.get(svc_name)["who"]

    assert contextvars.Context().run(in_worker) == ("override", "registered")
    with pytest.raises(InvalidRequest):
        services.get(other)  # restore did not leak outside its block


def test_chat_many_threads_see_overrides_and_the_recorder(svc_name):
    def responder(messages, model):
        return messages[-1]["content"]

    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, responder=responder) as fp:
        services.register(svc_name, "registered")

        seen = []

        class Spy(LLMClient):
            def chat(self, messages, **kw):
                # Runs in a pool thread of chat_many.
                seen.append((services.get(svc_name), current_recorder() is not None))
                return super().chat(messages, **kw)

        spy = Spy("fake-model", base_url=fp.base_url, api_key="x")
        with services.override(svc_name, "overridden"), recording() as rec:
            out = spy.chat_many([[{"role": "user", "content": f"m{i}"}] for i in range(6)])
        spy.close()
    assert [c.text for c in out] == [f"m{i}" for i in range(6)]
    assert seen == [("overridden", True)] * 6
    assert rec.counters["llm.calls"] == 6
