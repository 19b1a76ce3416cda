"""studyhall's Optuna storage: Optuna's RDB schema, written with SQLAlchemy Core, read through a cache."""

from studyhall.storage.rdb._storage import Queued, SQLStorage, TotalReached

__all__ = ["Queued", "SQLStorage", "TotalReached"]
