"""Make the repository's ``fault_injection`` package importable from the fault tests
(it is not installed; pyproject's packages.find includes only ``axlpy*``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
