"""`python -m sam3_adapt` runs the command line."""

import sys

from .cli import main

sys.exit(main())
