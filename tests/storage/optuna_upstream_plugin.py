"""A pytest plugin that runs Optuna's own tests on studyhall's storage.

Loaded (``-p optuna_upstream_plugin``) into a pytest run over the tests of Optuna's
source distribution. Optuna parametrizes its storage tests over
``optuna.testing.storages.STORAGE_MODES`` and builds each storage with
``StorageSupplier``; this plugin replaces those modes with studyhall's
(``studyhall-sqlite``, ``studyhall-postgresql``, ``studyhall-mysql``) and teaches the
supplier to build a ``SQLStorage`` with a cold cache on an emptied database.
Select the cases with ``-k studyhall``: the tests that hard-code Optuna's own
``RDBStorage`` are not about this storage.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import sqlalchemy as sa
from optuna.testing import storages as optuna_storages

from studyhall.storage import connect
from studyhall.storage._optuna import table
from studyhall.storage.rdb import SQLStorage

MODES = [m for m in os.environ.get("STUDYHALL_UPSTREAM_MODES", "sqlite,postgresql,mysql").split(",") if m]
_URLS = {
    "postgresql": os.environ.get("STUDYHALL_UPSTREAM_PG", ""),
    "mysql": os.environ.get("STUDYHALL_UPSTREAM_MYSQL", ""),
}
# Children before parents: Optuna's foreign keys have no ON DELETE CASCADE.
_TABLES = (
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

optuna_storages.STORAGE_MODES[:] = [f"studyhall-{m}" for m in MODES]
optuna_storages.STORAGE_MODES_HEARTBEAT[:] = [f"studyhall-{m}" for m in MODES]
_enter, _exit = optuna_storages.StorageSupplier.__enter__, optuna_storages.StorageSupplier.__exit__


_active: dict[str, int] = {"postgresql": 0, "mysql": 0}


def _url(backend: str) -> tuple[str, str | None]:
    """The database for a new supplier, and the scratch schema made for it (nested ones)."""
    if backend == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='optuna-upstream-')}/{uuid.uuid4().hex}.db", None
    _active[backend] += 1
    if _active[backend] == 1:
        return _URLS[backend], None
    # A second storage at once (copy_study from one to another): a database of its own.
    name = f"nested_{uuid.uuid4().hex[:8]}"
    _admin(backend, f"CREATE {_KIND[backend]} {name}")
    base = _URLS[backend]
    if backend == "postgresql":
        return base.rsplit("%3D", 1)[0] + f"%3D{name}", name
    return base.rsplit("/", 1)[0] + f"/{name}", name


_KIND = {"postgresql": "SCHEMA", "mysql": "DATABASE"}


def _admin(backend: str, sql: str) -> None:
    engine = sa.create_engine(_URLS[backend], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def _enter_studyhall(self: Any) -> Any:
    if not str(self.storage_specifier).startswith("studyhall-"):
        return _enter(self)
    backend = self.storage_specifier.removeprefix("studyhall-")
    url, self.studyhall_scratch = _url(backend)
    st = connect(url)
    with st.engine.begin() as conn:
        for model in _TABLES:
            conn.execute(sa.delete(table(model)))
    kwargs = dict(self.extra_args)
    self.storage = SQLStorage(
        st.engine,
        st.url,
        heartbeat_interval=kwargs.pop("heartbeat_interval", None),
        grace_period=kwargs.pop("grace_period", None),
        heartbeat_stale_trial_callback=kwargs.pop("heartbeat_stale_trial_callback", None),
    )
    if kwargs:
        raise TypeError(f"studyhall's storage takes no {sorted(kwargs)}")
    return self.storage


def _exit_studyhall(self: Any, *exc: Any) -> None:
    if not str(self.storage_specifier).startswith("studyhall-"):
        _exit(self, *exc)
        return
    backend = self.storage_specifier.removeprefix("studyhall-")
    if backend in _active:
        _active[backend] -= 1
    if self.studyhall_scratch is not None:
        connect(self.storage.url).close()
        _admin(
            backend, f"DROP {_KIND[backend]} {self.studyhall_scratch}" + (" CASCADE" if backend == "postgresql" else "")
        )


optuna_storages.StorageSupplier.__enter__ = _enter_studyhall  # type: ignore[method-assign]
optuna_storages.StorageSupplier.__exit__ = _exit_studyhall  # type: ignore[method-assign]
