"""The HTTP service in-process (FastAPI TestClient on SQLite): the API, bad input, auth, leases."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from studyhall.optimizer import (
    Categorical,
    Client,
    Float,
    Int,
    InvalidRequest,
    Orchestrator,
    StudyNotFound,
    TrialNotFound,
    create_app,
)
from studyhall.storage import DuplicateStudy, connect
from tests._util import wait_until

SPACE_JSON = {
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "k": {"type": "int", "low": 1, "high": 8},
    "instruction": {"type": "categorical", "choices": [0, 1, 2, "free", None, True]},
}
SPACE = {"x": Float(0, 1), "k": Int(1, 8), "instruction": Categorical(range(4))}
TOKEN = "s3cret-token"


def app_for_tests(storage, **kw):
    """The service, answering to TestClient's host name too (``http://testserver``)."""
    return create_app(storage, allowed_hosts=["testserver"], **kw)


@pytest.fixture
def http(sqlite_url):
    with TestClient(app_for_tests(sqlite_url)) as c:
        yield c


def error_of(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body["error"]["type"]


def test_the_whole_api(http, study_name):
    r = http.post(
        "/v1/studies", json={"name": study_name, "direction": "maximize", "sampler": "random", "seed": 1, "retries": 2}
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "name": study_name,
        "directions": ["maximize"],
        "n_trials": 0,
        "best_value": None,
        "best_params": None,
        "best_trial": None,
        "retries": 2,
    }
    assert error_of(http.post("/v1/studies", json={"name": study_name}), 409) == "DuplicateStudy"
    assert (
        http.post("/v1/studies", json={"name": study_name, "direction": "maximize", "load_if_exists": True}).status_code
        == 201
    )

    r = http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "k": 3})
    assert r.status_code == 200, r.text
    asked = r.json()["trials"]
    assert [t["number"] for t in asked] == [0, 1, 2]
    for t in asked:
        p = t["params"]
        assert set(p) == set(SPACE_JSON) and 0 <= p["x"] <= 1 and 1e-5 <= p["lr"] <= 0.1 and 1 <= p["k"] <= 8
        assert p["instruction"] in SPACE_JSON["instruction"]["choices"] and t["lease_expires_at"] > 0

    base = f"/v1/studies/{study_name}/trials"
    r = http.post(f"{base}/0/tell", json={"scores": [1, 0, 1, 1], "metrics": {"llm.latency_s": [0.1, 0.2, 0.4]}})
    assert r.status_code == 200, r.text
    told = r.json()
    assert told["state"] == "complete" and told["value"] == 0.75 and told["values"] == [0.75]
    assert told["user_attrs"]["score.n"] == 4 and told["distributions"]["k"] == {
        "type": "int",
        "low": 1,
        "high": 8,
        "log": False,
        "step": 1,
    }
    assert http.post(f"{base}/1/tell", json={"state": "fail", "error": "provider down"}).json()["state"] == "fail"
    assert http.post(f"{base}/2/tell", json={"value": 0.9}).json()["value"] == 0.9

    m = http.get(f"{base}/0/metrics").json()
    assert m["score"]["n"] == 4 and m["score"]["mean"] == 0.75 and sum(c for _, _, c in m["score"]["histogram"]) == 4
    assert m["llm.latency_s"]["max"] == 0.4

    info = http.get(f"/v1/studies/{study_name}").json()
    assert info["best_value"] == 0.9 and info["best_trial"] == 2 and info["best_params"] == asked[2]["params"]
    assert info["n_trials"] == 3
    listed = {s["name"]: s for s in http.get("/v1/studies").json()}
    assert listed[study_name]["best_value"] == 0.9 and listed[study_name]["n_trials"] == 3

    page = http.get(base, params={"state": "complete"}).json()
    assert [t["number"] for t in page["trials"]] == [0, 2] and page["total"] == 2
    page = http.get(base, params={"limit": 1, "offset": 1}).json()
    assert [t["number"] for t in page["trials"]] == [1] and page["total"] == 3
    assert page["trials"][0]["user_attrs"]["error"] == "provider down"
    assert http.get(f"{base}/2").json()["value"] == 0.9

    # enqueued parameters come out of the next ask, and the space is remembered
    assert (
        http.post(
            f"/v1/studies/{study_name}/enqueue", json={"params": {"x": 0.25, "k": 3, "lr": 0.01, "instruction": "free"}}
        ).status_code
        == 202
    )
    nxt = http.post(f"/v1/studies/{study_name}/ask", json={}).json()["trials"][0]
    assert nxt["params"] == {"x": 0.25, "k": 3, "lr": 0.01, "instruction": "free"}
    assert (
        error_of(http.post(f"/v1/studies/{study_name}/enqueue", json={"params": {"x": 7.0}}), 400) == "InvalidRequest"
    )

    assert http.delete(f"/v1/studies/{study_name}").status_code == 204
    assert error_of(http.get(f"/v1/studies/{study_name}"), 404) == "StudyNotFound"
    assert http.get("/healthz").json() == {"status": "ok"}


def test_multi_objective(http, study_name):
    http.post("/v1/studies", json={"name": study_name, "directions": ["maximize", "minimize"], "sampler": "nsga2"})
    http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})
    r = http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"values": [0.5, 3.0]})
    assert r.json()["values"] == [0.5, 3.0] and r.json()["value"] is None
    info = http.get(f"/v1/studies/{study_name}").json()
    assert info["directions"] == ["maximize", "minimize"] and info["best_value"] is None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app and study for the many bad-input cases (a fresh app each would cost a second)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('svc') / 'bad.db'}"
    with TestClient(app_for_tests(url)) as c:
        c.post("/v1/studies", json={"name": "S"})
        yield c


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": NaN}', 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"scores": [1, Infinity]}', 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": -Infinity}', 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": 0.5', 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b"[" * 100_000 + b"]" * 100_000, 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": "0.5"}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": 1, "metrics": {"a\\u0000": [1]}}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/0/tell", b"\xff\xfe{}", 422, "InvalidJSON"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": true}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"valu": 0.5}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/0/tell", b"{}", 400, "InvalidRequest"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"value": 1, "values": [1]}', 400, "InvalidRequest"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"values": [1, 2]}', 400, "InvalidRequest"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"scores": []}', 400, "InvalidRequest"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"state": "fail", "value": 1}', 400, "InvalidRequest"),
        ("post", "/v1/studies/S/trials/0/tell", b'{"state": "exploded"}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/zero/tell", b'{"value": 1}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/-1/tell", b'{"value": 1}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/99999999999999/tell", b'{"value": 1}', 422, "ValidationError"),
        ("post", "/v1/studies/S/trials/7000/tell", b'{"value": 1}', 404, "TrialNotFound"),
        ("post", "/v1/studies/nope/trials/0/tell", b'{"value": 1}', 404, "StudyNotFound"),
        ("get", "/v1/studies/nope/trials", None, 404, "StudyNotFound"),
        ("get", "/v1/studies/S/trials/7000/metrics", None, 404, "TrialNotFound"),
        ("get", "/v1/studies/S/trials?limit=0", None, 422, "ValidationError"),
        ("get", "/v1/studies/S/trials?state=sleeping", None, 422, "ValidationError"),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x": {"type": "float", "low": 2, "high": 1}}}',
            400,
            "InvalidRequest",
        ),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x": {"type": "float", "low": 0, "high": 1, "log": true}}}',
            400,
            "InvalidRequest",
        ),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x": {"type": "int", "low": 0.5, "high": 1}}}',
            422,
            "ValidationError",
        ),
        ("post", "/v1/studies/S/ask", b'{"space": {"x": {"type": "vector"}}}', 422, "ValidationError"),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x": {"type": "categorical", "choices": []}}}',
            422,
            "ValidationError",
        ),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x": {"type": "categorical", "choices": [[1]]}}}',
            422,
            "ValidationError",
        ),
        ("post", "/v1/studies/S/ask", b'{"k": 0}', 422, "ValidationError"),
        ("post", "/v1/studies/S/ask", b'{"lease_s": -1}', 422, "ValidationError"),
        (
            "post",
            "/v1/studies/S/ask",
            b'{"space": {"x\\u0000": {"type": "int", "low": 0, "high": 1}}}',
            422,
            "ValidationError",
        ),
        ("post", "/v1/studies", b'{"name": "a\\u0000b"}', 422, "ValidationError"),
        ("post", "/v1/studies", b'{"name": ""}', 422, "ValidationError"),
        ("post", "/v1/studies", b'{"name": "a/b"}', 422, "ValidationError"),
        ("post", "/v1/studies", b'{"name": "x", "direction": "sideways"}', 422, "ValidationError"),
        (
            "post",
            "/v1/studies",
            b'{"name": "x", "direction": "maximize", "directions": ["maximize"]}',
            400,
            "InvalidRequest",
        ),
        ("post", "/v1/studies", b'{"name": "x", "seed": 99999999999999999999}', 422, "ValidationError"),
        ("get", "/v1/studies/a%00b", None, 422, "ValidationError"),
        ("put", "/v1/studies", None, 405, "MethodNotAllowed"),
        ("get", "/v2/nothing", None, 404, "NotFound"),
    ],
)
def test_bad_input_is_a_4xx_envelope(shared, method, path, body, status, kind):
    http = shared
    number = http.post("/v1/studies/S/ask", json={"space": SPACE_JSON}).json()["trials"][0]["number"]
    path = path.replace("/trials/0/", f"/trials/{number}/")
    kw = {"content": body, "headers": {"content-type": "application/json"}} if body is not None else {}
    assert error_of(http.request(method.upper(), path, **kw), status) == kind
    if "/tell" in path and status != 404:  # nothing was written: the trial is still running and tellable
        assert http.post(f"/v1/studies/S/trials/{number}/tell", json={"value": 1}).status_code == 200


def test_told_twice_is_409_and_body_limits_are_413(sqlite_url, study_name):
    with TestClient(app_for_tests(sqlite_url, max_body_bytes=4096)) as http:
        http.post("/v1/studies", json={"name": study_name})
        http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})
        tell = f"/v1/studies/{study_name}/trials/0/tell"
        assert http.post(tell, json={"value": 1}).status_code == 200
        assert error_of(http.post(tell, json={"value": 2}), 409) == "TrialFinished"
        assert error_of(http.post(tell, json={"scores": [0.5] * 2000}), 413) == "PayloadTooLarge"

        def chunks():  # no Content-Length: the limit holds while streaming too
            for _ in range(100):
                yield b" " * 100

        r = http.post(tell, content=chunks(), headers={"content-type": "application/json"})
        assert error_of(r, 413) == "PayloadTooLarge"


def test_an_internal_error_is_a_generic_500_and_logged(sqlite_url, monkeypatch, caplog):
    def boom(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Orchestrator, "list_studies", boom)
    with TestClient(app_for_tests(sqlite_url)) as http, caplog.at_level(logging.ERROR, "studyhall.service"):
        r = http.get("/v1/studies")
    assert error_of(r, 500) == "InternalError" and "secret" not in r.text
    assert "secret internals" in caplog.text


def test_token_guards_every_endpoint_but_healthz(sqlite_url, study_name):
    with TestClient(app_for_tests(sqlite_url, token=TOKEN)) as http:
        assert http.get("/healthz").status_code == 200
        for path in ("/v1/studies", "/metrics", "/openapi.json", "/docs", f"/v1/studies/{study_name}"):
            assert error_of(http.get(path), 401) == "Unauthorized"
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        r = http.post("/v1/studies", json={"name": study_name}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post("/v1/studies", json={"name": study_name}, headers=ok).status_code == 201
        schema = http.get("/openapi.json", headers=ok).json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/healthz"]["get"]["security"] == []
        # the Client sends the token; without it the service's message says how to fix it
        remote = Client("http://testserver", TOKEN, http=http)
        assert remote.load_study(study_name).name == study_name
        with pytest.raises(InvalidRequest, match="Authorization: Bearer"):
            Client("http://testserver", http=http).list_studies()


def test_metrics_expose_request_counters_and_studyhall_telemetry(http, study_name):
    http.post("/v1/studies", json={"name": study_name})
    http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})
    http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"scores": [1, 0]})
    http.get("/v1/studies/missing")
    text = http.get("/metrics").text
    assert 'studyhall_http_requests_total{method="POST",route="/v1/studies/{name}/ask",status="200"} 1.0' in text
    assert 'studyhall_http_requests_total{method="GET",route="/v1/studies/{name}",status="404"} 1.0' in text
    assert "studyhall_service_trials_asked_total 1.0" in text
    told = [line for line in text.splitlines() if line.startswith("studyhall_trials_total{") and study_name in line]
    assert told and 'state="complete"' in told[0]  # from studyhall.optimizer.telemetry.registry


def test_client_has_the_study_surface(http, study_name):
    orch = Client("http://testserver", http=http)
    study = orch.create_study(study_name, direction="maximize", sampler="tpe", seed=0, retries=1)
    with pytest.raises(DuplicateStudy):
        orch.create_study(study_name)
    assert orch.create_study(study_name, direction="MAXIMIZE", load_if_exists=True).name == study_name
    with pytest.raises(StudyNotFound, match="known studies"):
        orch.load_study("missing")
    t = study.ask(SPACE)
    assert set(t.params) == set(SPACE)
    frozen = study.tell(t, scores=[1, 0, 1, 1])
    assert frozen.value == 0.75 and frozen.state.name == "COMPLETE" and frozen.distributions["k"].high == 8
    t2, t3 = study.ask_batch(SPACE, k=2)
    study.tell(t2, 0.9, metrics={"llm.latency_s": [0.2, 0.3]})
    study.tell(t3, state="fail", error="no luck")
    with pytest.raises(InvalidRequest, match="already finished"):
        study.tell(t3, 0.1)
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        study.tell(study.ask(), float("nan"))
    with pytest.raises(TrialNotFound):
        study.trial_metrics(99)
    assert study.best_value == 0.9 and study.best_params == t2.params and study.best_trial.number == t2.number
    assert study.trial_metrics(t2.number)["llm.latency_s"].n == 2
    assert [t.state.name for t in study.trials()] == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING"]
    assert [t.number for t in study.trials(states=["fail"])] == [t3.number]
    study.enqueue({"x": 0.5, "k": 2, "instruction": 3})
    assert study.ask().params == {"x": 0.5, "k": 2, "instruction": 3}
    assert study.retries == 1
    assert [i.name for i in orch.list_studies()] == [study_name] and orch.study_names() == [study_name]
    orch.delete_study(study_name)
    assert orch.list_studies() == []


def test_a_loop_moves_from_in_process_to_remote_by_one_line(http, sqlite_url):
    def run(orch, name):
        study = orch.create_study(name, direction="maximize", sampler="random", seed=3)
        for _ in range(5):
            t = study.ask({"x": Float(0, 1), "c": Categorical(["a", "b"])})
            study.tell(t, scores=[t.params["x"], 1.0 if t.params["c"] == "a" else 0.0])
        return study.best_params, study.best_value, len(study.trials())

    local = run(Orchestrator(sqlite_url), "local")
    remote = run(Client("http://testserver", http=http), "remote")
    assert local == remote  # same seed, same sampler, same storage: same results


def test_an_unrenewed_lease_fails_the_trial_and_retries_it(http, sqlite_url, study_name):
    http.post("/v1/studies", json={"name": study_name, "retries": 1})
    asked = http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "lease_s": 1}).json()["trials"][0]
    trial = f"/v1/studies/{study_name}/trials/0"
    # the app's background sweep (TestClient runs the lifespan) expires it
    t = wait_until(lambda: (r := http.get(trial).json())["state"] == "fail" and r, timeout=15, what="lease expiry")
    assert t["user_attrs"]["error"].startswith("lease expired") and t["user_attrs"]["failure"] == "lease"
    assert error_of(http.post(f"{trial}/tell", json={"value": 1}), 409) == "TrialFinished"
    assert error_of(http.post(f"{trial}/heartbeat", json={}), 409) == "TrialFinished"
    retry = http.post(f"/v1/studies/{study_name}/ask", json={"lease_s": 60}).json()["trials"][0]
    assert retry["params"] == asked["params"] and retry["number"] == 1
    assert http.get(f"/v1/studies/{study_name}/trials/1").json()["user_attrs"] == {"retry_of": 0, "retry": 1}
    assert http.post(f"/v1/studies/{study_name}/trials/1/tell", json={"value": 0.5}).status_code == 200
    assert "studyhall_service_leases_expired_total 1.0" in http.get("/metrics").text


def test_requests_expire_leases_without_the_background_task(sqlite_url, study_name):
    http = TestClient(app_for_tests(sqlite_url, sweep_interval=0.2))  # no `with`: no lifespan, no task
    http.post("/v1/studies", json={"name": study_name})
    http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "lease_s": 0.5})
    wait_until(lambda: http.get(f"/v1/studies/{study_name}/trials/0").json()["state"] == "fail", timeout=15)
    r = http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"value": 1})
    assert error_of(r, 409) == "TrialFinished"


def test_heartbeats_keep_a_leased_trial_alive_past_the_stale_grace(tmp_path, study_name):
    # grace_period=1: a trial with an ordinary heartbeat would be stale after 1 s.
    st = connect(f"sqlite:///{tmp_path / 'g.db'}", heartbeat_interval=1, grace_period=1)
    with TestClient(app_for_tests(st, sweep_interval=0.2)) as http:
        http.post("/v1/studies", json={"name": study_name})
        base = f"/v1/studies/{study_name}/trials"
        http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "lease_s": 2, "k": 2})
        t0 = st.now()
        study = Orchestrator(st).load_study(study_name)  # another "process" checking for stale trials

        def beat_until_3s_passed():
            r = http.post(f"{base}/0/heartbeat", json={"lease_s": 1.5})
            assert r.status_code == 200, r.text
            assert study.fail_stale_trials() == []
            return st.now() > t0 + 3

        wait_until(beat_until_3s_passed, timeout=30, interval=0.2)
        assert http.get(f"{base}/0").json()["state"] == "running"
        # a rejected tell keeps the lease: the client corrects it and tells again
        assert error_of(http.post(f"{base}/0/tell", json={"values": [1, 2]}), 400) == "InvalidRequest"
        assert http.post(f"{base}/0/heartbeat").status_code == 200
        assert http.post(f"{base}/0/tell", json={"value": 1}).json()["state"] == "complete"
        # trial 1 was never renewed: failed by its lease (not by the stale check), once
        t1 = http.get(f"{base}/1").json()
        assert t1["state"] == "fail" and t1["user_attrs"]["failure"] == "lease"
        assert error_of(http.post(f"{base}/1/heartbeat"), 409) == "TrialFinished"


def test_trials_asked_in_process_are_not_leased(http, sqlite_url, study_name):
    study = Orchestrator(sqlite_url).create_study(study_name)
    t = study.ask(SPACE)
    r = http.post(f"/v1/studies/{study_name}/trials/{t.number}/heartbeat")
    assert error_of(r, 409) == "NotLeased"
    assert http.post(f"/v1/studies/{study_name}/trials/{t.number}/tell", json={"value": 2}).status_code == 200


def test_an_expired_lease_refuses_tells_until_swept_and_abandoned_claims_are_taken_over(sqlite_url, study_name):
    import sqlalchemy as sa

    from studyhall.storage import tables

    leases = tables.leases
    app = app_for_tests(sqlite_url, sweep_interval=3600)  # no sweep unless this test runs one
    st = app.state.storage
    with TestClient(app) as http:
        http.post("/v1/studies", json={"name": study_name, "retries": 1})
        a, b = http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "lease_s": 0.3, "k": 2}).json()[
            "trials"
        ]
        wait_until(lambda: st.now() > a["lease_expires_at"] + 0.1, timeout=10, what="the lease to run out")
        base = f"/v1/studies/{study_name}/trials"
        assert error_of(http.post(f"{base}/0/tell", json={"value": 1}), 409) == "LeaseExpired"
        assert error_of(http.post(f"{base}/0/heartbeat"), 409) == "LeaseExpired"
        assert http.get(f"{base}/0").json()["state"] == "running"  # refused, not yet failed
        # trial 1's expiry was claimed two minutes ago by a process that then died
        tid = st.optuna.get_trial_id_from_study_id_trial_number(st.study_id(study_name), b["number"])
        claimed_at = st.now() - 120
        st.transaction(
            lambda c: c.execute(sa.update(leases).where(leases.c.trial_id == tid).values(expires_at=-claimed_at))
        )
        expired = app.state.leases.sweep()
        assert sorted(expired) == [(study_name, 0), (study_name, 1)]
        assert app.state.leases.sweep() == []  # idempotent
        assert [t["state"] for t in http.get(base).json()["trials"]] == ["fail", "fail", "waiting", "waiting"]
        assert st.transaction(lambda c: c.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one()) == 0


def nested(levels):
    value = "bottom"
    for _ in range(levels):
        value = [value]
    return value


def test_deep_user_attrs_are_refused_at_the_door_and_stored_ones_still_read(storage_url, study_name):
    # issue 13, item 6: 260 levels (2 KB) used to commit, answer 500, and break every later read
    with TestClient(app_for_tests(storage_url)) as http:
        http.post("/v1/studies", json={"name": study_name})
        http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON, "k": 2})
        base = f"/v1/studies/{study_name}/trials"
        r = http.post(f"{base}/0/tell", json={"value": 1, "user_attrs": {"deep": nested(260)}})
        assert error_of(r, 422) == "ValidationError" and "deeper than 32 levels" in r.json()["error"]["message"]
        r = http.post(f"/v1/studies/{study_name}/enqueue", json={"params": {"x": 0.5}, "user_attrs": {"d": nested(33)}})
        assert error_of(r, 422) == "ValidationError"
        assert http.get(f"{base}/0").json()["state"] == "running"  # nothing was written
        r = http.post(f"{base}/0/tell", json={"value": 1, "user_attrs": {"deep": nested(32)}})
        assert r.status_code == 200 and r.json()["user_attrs"]["deep"] == nested(32)

        # an attribute stored by other means (Optuna itself) is cut on the way out, not a 500
        st = connect(storage_url)
        tid = st.optuna.get_trial_id_from_study_id_trial_number(st.study_id(study_name), 1)
        st.optuna.set_trial_user_attr(tid, "deep", nested(500))
        for path in (f"{base}/1", base):
            r = http.get(path)
            assert r.status_code == 200, r.text
        shown = http.get(f"{base}/1").json()["user_attrs"]["deep"]
        for _ in range(32):
            shown = shown[0]
        assert "nested deeper than 32 levels" in shown
        assert http.post(f"{base}/1/tell", json={"value": 2}).json()["state"] == "complete"


def test_without_a_token_only_loopback_names_and_allowed_hosts_are_served(sqlite_url, study_name):
    # issue 13, item 7: DNS rebinding (Host: attacker.example) and cross-origin pages
    with TestClient(create_app(sqlite_url, allowed_hosts=["studies.example.com"])) as http:
        for host in (
            "127.0.0.1",
            "127.0.0.1:8765",
            "localhost:8765",
            "LOCALHOST",
            "[::1]:8765",
            "studies.example.com:80",
        ):
            assert http.get("/v1/studies", headers={"host": host}).status_code == 200, host
        for host in (
            "attacker.example",
            "attacker.example:8765",
            "127.0.0.1.attacker.example",
            "localhost.evil",
            "testserver",
        ):
            r = http.post("/v1/studies", json={"name": study_name}, headers={"host": host})
            assert error_of(r, 400) == "HostNotAllowed", host
            assert "--allow-host" in r.json()["error"]["message"]
        assert http.get("/healthz", headers={"host": "attacker.example"}).status_code == 400
        ok = {"host": "127.0.0.1:8765"}
        for origin in ("http://attacker.example", "null", "https://studies.example.com.evil:443"):
            r = http.post("/v1/studies", json={"name": study_name}, headers={**ok, "origin": origin})
            assert error_of(r, 403) == "CrossOrigin", origin
        assert Orchestrator(sqlite_url).study_names() == []  # nothing was written
        for origin in ("http://localhost:3000", "http://127.0.0.1:8765", "https://studies.example.com"):
            assert http.get("/v1/studies", headers={**ok, "origin": origin}).status_code == 200, origin
    # with a token, the token protects it: any name (and origin), unless hosts are given
    with TestClient(create_app(sqlite_url, token=TOKEN)) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get("/v1/studies", headers={**auth, "host": "studies.internal:8765"}).status_code == 200
        r = http.get("/v1/studies", headers={**auth, "origin": "http://attacker.example"})
        assert r.status_code == 200  # any name is allowed here; the browser would need the token too
    with TestClient(create_app(sqlite_url, token=TOKEN, allowed_hosts=[])) as http:
        assert error_of(http.get("/v1/studies", headers={"Authorization": f"Bearer {TOKEN}"}), 400) == "HostNotAllowed"


def test_an_ask_is_two_transactions_and_a_tell_one_lease_included(storage_url, study_name):
    # issue 12: the service took about seven (a name lookup per request, the lease granted,
    # beaten and claimed in transactions of their own) where in-process ask+tell takes three
    import sqlalchemy as sa

    app = app_for_tests(storage_url, sweep_interval=3600)
    begun = []
    sa.event.listen(app.state.storage.engine, "begin", lambda _conn: begun.append(1))
    with TestClient(app) as http:
        http.post("/v1/studies", json={"name": study_name, "sampler": "random"})
        http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})  # the study's first ask
        http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"value": 1})
        for number in (1, 2):
            begun.clear()
            r = http.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})
            assert r.status_code == 200 and r.json()["trials"][0]["number"] == number
            # one to see whether a queued trial waits, one to write the trial with its lease
            assert len(begun) <= 2, len(begun)
            begun.clear()
            r = http.post(f"/v1/studies/{study_name}/trials/{number}/tell", json={"value": 1})
            assert r.json()["state"] == "complete"
            assert len(begun) == 1


def test_a_study_deleted_or_replaced_elsewhere_is_seen_by_ask_and_tell(storage_url, study_name):
    # ask and tell trust the study this process looked up once; another process's
    # delete (or delete and create again) must still be answered as before: 404, or the new study
    other = Orchestrator(storage_url)
    with TestClient(app_for_tests(storage_url)) as http:
        ask = f"/v1/studies/{study_name}/ask"
        http.post("/v1/studies", json={"name": study_name})
        assert http.post(ask, json={"space": SPACE_JSON, "k": 2}).status_code == 200
        assert http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"value": 1}).status_code == 200

        other.delete_study(study_name)
        assert error_of(http.post(ask, json={"space": SPACE_JSON}), 404) == "StudyNotFound"
        assert error_of(http.post(f"/v1/studies/{study_name}/trials/1/tell", json={"value": 1}), 404) == "StudyNotFound"

        other.create_study(study_name)  # the same name, a new study (on SQLite maybe even the same id)
        r = http.post(ask, json={"space": SPACE_JSON})
        assert r.status_code == 200 and r.json()["trials"][0]["number"] == 0
        assert http.post(f"/v1/studies/{study_name}/trials/0/tell", json={"value": 2}).json()["state"] == "complete"
        assert [t.value for t in other.load_study(study_name).trials()] == [2]

        # a study whose id now belongs to another name (SQLite reuses the highest id) is refused too
        first = f"{study_name}-a"
        http.post("/v1/studies", json={"name": first})
        assert http.post(f"/v1/studies/{first}/ask", json={"space": SPACE_JSON}).status_code == 200
        other.delete_study(first)
        other.create_study(f"{study_name}-b")
        assert error_of(http.post(f"/v1/studies/{first}/ask", json={"space": SPACE_JSON}), 404) == "StudyNotFound"
        assert other.load_study(f"{study_name}-b").trials() == []


def test_a_tell_sent_again_after_its_answer_was_lost_is_answered_as_stored(http, study_name):
    # Seen in the multi-host test: a tell was written, its answer was lost in a network cut,
    # and the client's retry was refused as TrialFinished although its own tell had been stored.
    study = Client("http://testserver", http=http).create_study(study_name)
    t = study.ask({"x": Float(0, 1)})
    first = study.tell(t, 0.25, user_attrs={"k": 1})
    again = study.tell(t, 0.25, user_attrs={"k": 1})  # the same tell, as if the first answer never came
    assert again.state.name == "COMPLETE" and again.value == first.value == 0.25 and again.user_attrs["k"] == 1
    with pytest.raises(InvalidRequest, match="already finished"):
        study.tell(t, 0.5)  # another tell of a told trial is still refused
    other = Client("http://testserver", http=http).load_study(study_name)
    with pytest.raises(InvalidRequest, match="already finished"):
        other.tell(t.number, 0.25, user_attrs={"k": 1})  # the same values from another client: not its tell
    assert len(study.trials()) == 1 and study.trials()[0].value == 0.25


def test_a_study_whose_asks_are_slow_asks_on_a_thread(sqlite_url, study_name, monkeypatch):
    # On SQLite ask and tell run on the event loop, except the asks of a study whose last
    # ask took more than AskCosts.LIMIT_S of CPU (a slow sampler would hold the loop).
    from studyhall.optimizer.service import _routes

    on_loop: list[bool] = []
    real = _routes._database_work

    async def spy(pool, fn, inline_wait_s):
        on_loop.append(inline_wait_s is not None)
        return await real(pool, fn, inline_wait_s)

    monkeypatch.setattr(_routes, "_database_work", spy)
    monkeypatch.setattr(_routes.AskCosts, "LIMIT_S", 0.0)  # any ask that cost anything counts as slow
    with TestClient(app_for_tests(sqlite_url)) as c:
        assert c.post("/v1/studies", json={"name": study_name}).status_code == 201
        told = []
        for _ in range(2):
            r = c.post(f"/v1/studies/{study_name}/ask", json={"space": SPACE_JSON})
            assert r.status_code == 200, r.text
            number = r.json()["trials"][0]["number"]
            r = c.post(f"/v1/studies/{study_name}/trials/{number}/tell", json={"value": 1.0})
            told.append(r.json()["state"])
    # ask (no cost known yet: the loop), tell (the loop), ask (the last one cost CPU: a thread), tell
    assert on_loop == [True, True, False, True]
    assert told == ["complete", "complete"]
