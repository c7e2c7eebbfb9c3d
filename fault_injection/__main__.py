"""``python -m fault_injection``: see :func:`fault_injection.cli.main`."""

import sys

from .cli import main

sys.exit(main())
