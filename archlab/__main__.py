"""``python -m archlab ...`` (what ``torchrun -m archlab train ...`` runs in every process)."""

from archlab.cli import main

main()
