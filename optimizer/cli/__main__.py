"""``python -m studyhall.optimizer.cli``: the ``studyhall`` command line."""

from __future__ import annotations

from studyhall.optimizer.cli import main

main()
