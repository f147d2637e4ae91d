"""``python -m archlab.cli ...`` (what sweeps and ``torchrun -m archlab.cli`` launch)."""

from archlab.cli import main

main()
