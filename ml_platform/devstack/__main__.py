"""``python -m ml_platform.devstack``: the production profile on 127.0.0.1 (``make dev-prod``)."""

import sys

from ml_platform.devstack.stack import main

sys.exit(main())
