"""``python -m studyhall``: the same command line as the ``studyhall`` console script."""

from studyhall.optimizer.cli import main

main()
