"""The gate's fast path for ask and tell (optimizer/service/_hot.py): the same answers as FastAPI's path."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi.testclient import TestClient

from studyhall.optimizer import create_app
from studyhall.optimizer.service._hot import HotRoutes

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}, "k": {"type": "int", "low": 1, "high": 8}}
LONG = "n" * 513

# (method, path, body or raw bytes, content type): ordinary requests, refusals of the work, and
# garbage that the fast path leaves to FastAPI. "{s}" is the study's name.
REQUESTS: list[tuple[str, str, object, str]] = [
    ("POST", "/v1/studies/{s}/ask", {"space": SPACE}, "application/json"),
    ("POST", "/v1/studies/{s}/ask", {"k": 2}, "application/json; charset=utf-8"),
    ("POST", "/v1/studies/{s}/trials/0/tell", {"value": 0.5, "key": "k0000000"}, "application/json"),
    ("POST", "/v1/studies/{s}/trials/0/tell", {"value": 0.5, "key": "k0000000"}, "application/json"),  # the same again
    ("POST", "/v1/studies/{s}/trials/0/tell", {"value": 0.7}, "application/json"),  # 409 TrialFinished
    ("POST", "/v1/studies/{s}/trials/1/tell", {"values": [1, 2]}, "application/json"),  # 400 InvalidRequest
    ("POST", "/v1/studies/{s}/trials/1/tell", {"state": "fail", "error": "why"}, "application/json"),
    ("POST", "/v1/studies/{s}/trials/999/tell", {"value": 1}, "application/json"),  # 404 TrialNotFound
    ("POST", "/v1/studies/nope/ask", {"space": SPACE}, "application/json"),  # 404 StudyNotFound
    ("POST", "/v1/studies/nope/trials/0/tell", {"value": 1}, "application/json"),
    ("POST", "/v1/studies/{s}/ask", {"k": 0}, "application/json"),  # 422: FastAPI's
    ("POST", "/v1/studies/{s}/ask", {"space": SPACE, "extra": 1}, "application/json"),
    ("POST", "/v1/studies/{s}/ask", b'{"k": NaN}', "application/json"),
    ("POST", "/v1/studies/{s}/ask", b'{"k": ', "application/json"),
    ("POST", "/v1/studies/{s}/ask", b"[1]", "application/json"),
    ("POST", "/v1/studies/{s}/ask", b"\xff\xfe", "application/json"),
    ("POST", "/v1/studies/{s}/ask", b"", "application/json"),
    ("POST", "/v1/studies/{s}/ask", {"k": 1}, "text/plain"),
    ("POST", "/v1/studies/{s}/trials/01/tell", {"value": 1}, "application/json"),
    ("POST", "/v1/studies/{s}/trials/99999999999/tell", {"value": 1}, "application/json"),
    ("POST", "/v1/studies/{s}/trials/-1/tell", {"value": 1}, "application/json"),
    ("POST", f"/v1/studies/{LONG}/ask", {"k": 1}, "application/json"),
    ("POST", "/v1/studies/a%00b/ask", {"k": 1}, "application/json"),
    ("POST", "/v1/studies/{s}/trials/2/tell", {"value": 1e308}, "application/json"),
    ("PUT", "/v1/studies/{s}/ask", {"k": 1}, "application/json"),
]


def _answers(sqlite_url: str, study: str) -> Iterator[tuple[int, object]]:
    with TestClient(create_app(sqlite_url, allowed_hosts=["testserver"])) as http:
        assert http.post("/v1/studies", json={"name": study, "sampler": "random", "seed": 3}).status_code == 201
        for method, path, body, ctype in REQUESTS:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.request(method, path.format(s=study), content=content, headers={"content-type": ctype})
            try:
                doc = r.json()
            except ValueError:
                doc = r.text
            yield r.status_code, _stable(doc, sqlite_url)
        metrics = http.get("/metrics").text
        yield 200, sorted(line for line in metrics.splitlines() if line.startswith("studyhall_http_requests_total{"))


def _stable(doc: object, url: str) -> object:
    """``doc`` without what differs from run to run (times, the database's file name)."""
    if isinstance(doc, dict):
        return {
            k: _stable(v, url)
            for k, v in doc.items()
            if k not in ("datetime_start", "datetime_complete", "lease_expires_at", "duration_s")
        }
    if isinstance(doc, list):
        return [_stable(v, url) for v in doc]
    if isinstance(doc, str):
        return doc.replace(url, "<url>")
    return doc


def test_the_fast_path_answers_as_fastapi_does(tmp_path, study_name, monkeypatch):
    taken: list[str] = []
    answer = HotRoutes.answer

    async def spy(self, scope, body, receive, send):  # type: ignore[no-untyped-def]
        done = await answer(self, scope, body, receive, send)
        if done:
            taken.append(scope["path"])
        return done

    monkeypatch.setattr(HotRoutes, "answer", spy)
    fast = list(_answers(f"sqlite:///{tmp_path / 'fast.db'}", study_name))
    assert len(taken) == 10  # the ordinary requests and the work's own refusals; the rest went on to FastAPI

    async def never(self, scope, body, receive, send):  # type: ignore[no-untyped-def]
        return False

    monkeypatch.setattr(HotRoutes, "answer", never)
    slow = list(_answers(f"sqlite:///{tmp_path / 'slow.db'}", study_name))
    for request, a, b in zip(REQUESTS + [("GET", "/metrics", None, "")], fast, slow):
        assert a == b, request
    statuses = [status for status, _ in fast]
    assert statuses[:10] == [200, 200, 200, 200, 409, 400, 200, 404, 404, 404]
    assert set(statuses[10:-1]) <= {404, 405, 409, 422}, statuses  # 409: FastAPI reads trial "01" as 1, told already
