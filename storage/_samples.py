"""A metric's raw samples as stored (``studyhall_trial_metrics.samples``), and one trial's read back in order.

Two stored forms, named by the row's ``samples_format`` (migration 0002):

- ``F8`` (0): little-endian float64, 8 bytes a sample: any finite samples, and
  every row written before the column existed;
- ``BITS`` (1): samples that are all exactly 0.0 or 1.0 (pass/fail scores), one bit
  each, least significant bit first (numpy's ``packbits(bitorder="little")``), then
  one byte saying how many samples the last packed byte holds (1-8). 1,000 scores:
  126 bytes instead of 8,000, which also keeps the row out of SQLite's overflow pages.

Both read back exactly, in the order told (``-0.0`` is not 0/1 here: it stays F8).
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from studyhall.storage._schema import trial_metrics
from studyhall.storage._storage import Storage

F8 = 0
"""``samples_format`` of little-endian float64 samples (and of every row older than the column)."""
BITS = 1
"""``samples_format`` of 0/1 samples packed one bit each."""

_ONE = int(np.float64(1.0).view(np.uint64))  # 1.0's bit pattern: 0/1 is checked bit for bit


def encode_samples(samples: np.ndarray) -> tuple[int, bytes]:
    """(samples_format, blob) for finite float64 ``samples``: BITS when every one is exactly 0.0 or 1.0, else F8."""
    arr = np.ascontiguousarray(samples, dtype="<f8").reshape(-1)
    words = arr.view("<u8")
    ones = words == _ONE
    if arr.size and np.count_nonzero(ones) == np.count_nonzero(words):  # every non-zero pattern is 1.0's
        last = arr.size - 8 * ((arr.size - 1) // 8)  # samples in the last packed byte, 1-8
        return BITS, np.packbits(ones, bitorder="little").tobytes() + bytes((last,))
    return F8, arr.tobytes()


def decode_samples(samples_format: int | None, blob: bytes) -> np.ndarray:
    """The float64 samples of a stored ``blob`` of ``samples_format`` (None, as a row before migration 0002 reads: F8)."""
    if not samples_format:
        return np.frombuffer(blob, dtype="<f8")
    if samples_format == BITS:
        n = 8 * (len(blob) - 2) + blob[-1]
        packed = np.frombuffer(blob, dtype=np.uint8, count=len(blob) - 1)
        return np.unpackbits(packed, count=n, bitorder="little").astype(np.float64)
    raise ValueError(
        f"samples stored in format {samples_format}, which this studyhall does not know; upgrade studyhall"
    )


def read_trial_samples(st: Storage, trial_id: int, name: str) -> np.ndarray | None:
    """The samples of metric ``name`` told for trial ``trial_id``, in the order told; None if there are none."""
    query = sa.select(trial_metrics.c.samples_format, trial_metrics.c.samples).where(
        trial_metrics.c.trial_id == trial_id, trial_metrics.c.name == name
    )
    row = st.transaction(lambda conn: conn.execute(query).first(), read=True)
    return None if row is None or row.samples is None else decode_samples(row.samples_format, row.samples)
