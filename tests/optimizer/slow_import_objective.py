"""An objective whose module takes $STUDYHALL_TEST_IMPORT_S seconds to import (as heavy ML libraries do)."""

from __future__ import annotations

import os
import time

time.sleep(float(os.environ.get("STUDYHALL_TEST_IMPORT_S", "0")))


def objective(trial) -> float:  # type: ignore[no-untyped-def]
    return trial.suggest_float("x", 0, 1)
