"""optuna-dashboard's own storage loader and API read a studyhall database as it is."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import pytest

from studyhall.optimizer import Float, Orchestrator


def _get(app, path: str):  # a WSGI request without a network
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_dashboard_loader_and_api_show_the_telemetry(request, backend, study_name):
    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage

    url = request.getfixturevalue(f"{backend}_url")
    study = Orchestrator(url).create_study(study_name, direction="maximize")
    t = study.ask({"x": Float(0, 1)})
    study.tell(t, scores=[0.0, 1.0, 1.0, 1.0], metrics={"llm.latency_s": [0.2, 0.4]})

    dash_storage = get_storage(url)  # what `optuna-dashboard URL` does
    try:
        app = wsgi(dash_storage)
        studies = _get(app, "/api/studies")["study_summaries"]
        sid = next(s["study_id"] for s in studies if s["study_name"] == study_name)
        detail = _get(app, f"/api/studies/{sid}")
        attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
        assert attrs["score.p90"] == "1.0" and attrs["score.n"] == "4"
        assert "llm.latency_s.p50" in attrs
    finally:
        dash_storage.engine.dispose()
