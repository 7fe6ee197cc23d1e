"""``python -m ml_platform``."""

import sys

from ml_platform.cli import main

sys.exit(main())
