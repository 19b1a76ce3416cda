"""studyhall's Core description of Optuna's tables is Optuna's schema, column by column."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from optuna.storages._rdb import models

from studyhall.storage._optuna import table

MODELS = [
    "StudyModel",
    "StudyDirectionModel",
    "StudyUserAttributeModel",
    "StudySystemAttributeModel",
    "TrialModel",
    "TrialUserAttributeModel",
    "TrialSystemAttributeModel",
    "TrialParamModel",
    "TrialValueModel",
    "TrialIntermediateValueModel",
    "TrialHeartbeatModel",
]


def _shape(t: sa.Table) -> dict[str, object]:
    def kind(c: sa.Column) -> object:
        if isinstance(c.type, sa.Enum):
            return ("Enum", c.type.name, tuple(c.type.enums))
        return repr(c.type)

    return {
        "name": t.name,
        "columns": [
            (
                c.name,
                kind(c),
                c.nullable,
                c.primary_key,
                bool(c.index),
                bool(c.unique),
                sorted(f.target_fullname for f in c.foreign_keys),
            )
            for c in t.columns
        ],
        "unique": sorted(tuple(c.name for c in u.columns) for u in t.constraints if isinstance(u, sa.UniqueConstraint)),
        "defaults": sorted(c.name for c in t.columns if c.default is not None and not c.primary_key),
    }


@pytest.mark.parametrize("model", MODELS)
def test_each_table_matches_optunas_model(model: str):
    assert _shape(table(model)) == _shape(getattr(models, model).__table__)


def test_every_optuna_table_studyhall_writes_is_described():
    described = {table(m).name for m in MODELS}
    assert set(models.BaseModel.metadata.tables) - described == {"version_info"}
