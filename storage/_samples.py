"""One trial's raw samples of one metric, as told (in order): what a paired comparison needs."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from studyhall.storage._schema import trial_metrics
from studyhall.storage._storage import Storage


def read_trial_samples(st: Storage, trial_id: int, name: str) -> np.ndarray | None:
    """The samples of metric ``name`` told for trial ``trial_id``, in the order told; None if there are none."""
    query = sa.select(trial_metrics.c.samples).where(trial_metrics.c.trial_id == trial_id, trial_metrics.c.name == name)
    blob = st.transaction(lambda conn: conn.execute(query).scalar_one_or_none())
    return None if blob is None else np.frombuffer(blob, dtype="<f8")
