"""A trial that exists only in this process until it is written whole, in one transaction.

``SQLStorage.begin_trial`` hands out a provisional (negative) id. Optuna's ``Trial``
and the sampler work on it as on any trial: ``get_trial`` returns ``Pending.trial``,
and ``set_trial_param`` / ``set_trial_*_attr`` change it in memory. ``commit_trial``
then writes the row and everything gathered with it, and gives ``Pending.trial``
(the very object Optuna's ``Trial`` holds) its real id and number.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from studyhall.storage._limits import attr_json, check_name
from studyhall.storage._optuna import table
from studyhall.storage.rdb._rows import intermediate_repr, new_frozen, value_repr


class Pending:
    """The trial being created and what it carries."""

    def __init__(self, study_id: int, trial: FrozenTrial) -> None:
        self.study_id = study_id
        self.trial = trial

    @classmethod
    def new(cls, study_id: int, provisional: int, expected_number: int) -> Pending:
        """A RUNNING trial started now, numbered as it most likely will be."""
        return cls(study_id, new_frozen(provisional, expected_number, TrialState.RUNNING, datetime.now(), None))

    @classmethod
    def from_template(cls, study_id: int, template: FrozenTrial | None) -> Pending:
        """Optuna's ``create_new_trial``: a RUNNING trial started now, or a copy of ``template``."""
        if template is None:
            return cls(study_id, new_frozen(-1, -1, TrialState.RUNNING, datetime.now(), None))
        return cls(study_id, copy.deepcopy(template))

    @property
    def state(self) -> TrialState:
        """The state the row is written with."""
        return self.trial.state

    @property
    def datetime_start(self) -> datetime | None:
        """When the trial started (local time)."""
        return self.trial.datetime_start

    @property
    def datetime_complete(self) -> datetime | None:
        """When the trial finished (local time), for a finished template."""
        return self.trial.datetime_complete

    @property
    def system_attrs(self) -> dict[str, Any]:
        """System attributes written with the row (the ask token goes here)."""
        return self.trial.system_attrs

    def write_children(self, conn: sa.Connection, trial_id: int) -> None:
        """Insert the trial's values, parameters, intermediate values and attributes."""
        t = self.trial
        if t.values is not None:
            conn.execute(
                sa.insert(table("TrialValueModel")),
                [
                    {"trial_id": trial_id, "objective": i, "value": v, "value_type": k}
                    for i, (v, k) in enumerate(map(value_repr, t.values))
                ],
            )
        if t.params:
            # In the order they were set: Optuna hands parameters back in param_id order.
            conn.execute(
                sa.insert(table("TrialParamModel")),
                [
                    {
                        "trial_id": trial_id,
                        "param_name": check_name("parameter name", name),
                        "param_value": t.distributions[name].to_internal_repr(value),
                        "distribution_json": distribution_to_json(t.distributions[name]),
                    }
                    for name, value in t.params.items()
                ],
            )
        if t.intermediate_values:
            conn.execute(
                sa.insert(table("TrialIntermediateValueModel")),
                [
                    {"trial_id": trial_id, "step": step, "intermediate_value": v, "intermediate_value_type": k}
                    for step, (v, k) in ((s, intermediate_repr(x)) for s, x in t.intermediate_values.items())
                ],
            )
        for model, kind, attrs in (
            ("TrialUserAttributeModel", "user attribute", t.user_attrs),
            ("TrialSystemAttributeModel", "system attribute", t.system_attrs),
        ):
            if attrs:
                conn.execute(
                    sa.insert(table(model)),
                    [{"trial_id": trial_id, "key": k, "value_json": attr_json(kind, k, v)} for k, v in attrs.items()],
                )

    def frozen(self, trial_id: int, number: int) -> FrozenTrial:
        """The trial under its real id and number (the same object Optuna's ``Trial`` holds)."""
        self.trial._trial_id = trial_id
        self.trial.number = number
        return self.trial
