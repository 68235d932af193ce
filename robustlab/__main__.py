"""``python -m robustlab`` (also what ``torchrun -m robustlab`` runs)."""

from robustlab.cli import main

main()
