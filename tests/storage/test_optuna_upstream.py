"""Optuna's own tests, from its source distribution, run on studyhall's storage.

What runs, what does not apply and why: ``tests/storage/_upstream.py``.
"""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI
from tests.storage._upstream import UpstreamRun, folder_of, problem, started, verdicts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_optunas_own_tests_pass_on_studyhalls_storage(request: pytest.FixtureRequest) -> None:
    folder = folder_of(request.config)
    if not started(folder):  # selected by a hook-less run (e.g. pytest -p no:conftest): start it now
        run = UpstreamRun(folder)
        request.addfinalizer(run.close)
        run.start()
    why = problem(folder)
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why}; CI=true requires it", pytrace=False)
        pytest.skip(why)
    for part, (code, out) in verdicts(folder, timeout=580).items():
        lines = out.strip().splitlines()
        summary = lines[-1] if lines else ""
        assert code == 0, f"{part}: {summary}\n{out[-8000:]}"
        assert " passed" in summary and "failed" not in summary, f"{part}: {summary}"
