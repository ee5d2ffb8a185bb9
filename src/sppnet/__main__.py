"""``python -m sppnet`` runs the command line (also how torchrun starts it)."""

import sys

from .cli import main

sys.exit(main())
