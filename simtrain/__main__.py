"""``python -m simtrain ...``: the same command line as the ``simtrain`` script (rank 8: the one module above cli)."""

from simtrain.cli import main

main()
