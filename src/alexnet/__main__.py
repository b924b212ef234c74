"""``python -m alexnet`` (what ``torchrun -m alexnet`` runs): the ``alexnet`` command."""

import sys

from .cli import main

sys.exit(main())
