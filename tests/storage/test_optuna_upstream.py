"""Optuna's own tests, from its source distribution, run on studyhall's storage.

What runs, what does not apply and why: ``tests/storage/_upstream.py``.
"""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI
from tests.storage._upstream import RUN_KEY, UpstreamRun


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_optunas_own_tests_pass_on_studyhalls_storage(request: pytest.FixtureRequest) -> None:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:  # selected by a hook-less run (e.g. pytest -p no:conftest): start it now
        run = request.config.stash[RUN_KEY] = UpstreamRun()
        run.start()
    if run.problem is not None:
        if IN_CI:
            pytest.fail(f"{run.problem}; CI=true requires it", pytrace=False)
        pytest.skip(run.problem)
    code, out = run.wait(timeout=580)
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert code == 0, f"{summary}\n{out[-8000:]}"
    assert " passed" in summary and "failed" not in summary, summary
