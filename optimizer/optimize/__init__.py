"""``Study.optimize``: the parent loop, where trials run (a pool or this thread), and the remote trial.

Nothing is imported here, so that a pool worker importing the worker-side runner
(``_trial_runner``) loads neither Optuna nor SQLAlchemy.
"""

from __future__ import annotations
