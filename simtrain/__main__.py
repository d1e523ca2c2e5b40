"""``python -m simtrain ...``: the same command line as the ``simtrain`` script."""

from simtrain.cli import main

main()
