"""``python -m studyhall.optimizer.cli``: the ``studyhall`` command line."""

from studyhall.optimizer.cli import main

main()
