"""studyhall's Optuna storage passes Optuna's own storage test suite, on every backend.

``optuna.testing.pytest_storages.StorageTestCase`` ships with Optuna: the contract
every Optuna storage must meet. Each case gets an empty database (its tables
emptied) and a storage with a cold cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from optuna.testing.pytest_storages import StorageTestCase

from studyhall.storage import connect
from studyhall.storage._optuna import table
from studyhall.storage.rdb import SQLStorage

# Children before parents (Optuna's tables have foreign keys, without ON DELETE CASCADE).
_OPTUNA_TABLES = (
    "TrialParamModel",
    "TrialValueModel",
    "TrialIntermediateValueModel",
    "TrialUserAttributeModel",
    "TrialSystemAttributeModel",
    "TrialHeartbeatModel",
    "TrialModel",
    "StudyDirectionModel",
    "StudyUserAttributeModel",
    "StudySystemAttributeModel",
    "StudyModel",
)


def empty_storage(url: str) -> SQLStorage:
    """A fresh SQLStorage (cold cache) on the database at ``url``, with Optuna's tables emptied."""
    st = connect(url)
    with st.engine.begin() as conn:
        for model in _OPTUNA_TABLES:
            conn.execute(sa.delete(table(model)))
    return SQLStorage(st.engine, st.url)


# Optuna's MySQL schema stores DATETIME in whole seconds, so these cases compare a
# microsecond timestamp with the second it was stored as. Optuna's own RDBStorage fails
# exactly these four on MariaDB too; strict, so that a fixed schema is noticed.
_SECONDS_ONLY = {
    "test_create_new_trial[mysql]",
    "test_create_new_trial_with_template_trial[mysql-start_time0-complete_time0]",  # the case with microseconds
    "test_get_trial[mysql]",
    "test_get_all_trials[mysql]",
}


@pytest.fixture
def storage(storage_url: str, request: pytest.FixtureRequest) -> Iterator[SQLStorage]:
    if request.node.name in _SECONDS_ONLY:
        request.applymarker(pytest.mark.xfail(strict=True, reason="Optuna's MySQL schema keeps whole seconds"))
    yield empty_storage(storage_url)


class TestOptunaContract(StorageTestCase):
    """Optuna's storage contract, unchanged."""
