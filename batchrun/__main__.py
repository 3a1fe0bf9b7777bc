"""`python -m batchrun`: the `batchrun` command."""

import sys

from .cli import main

sys.exit(main())
