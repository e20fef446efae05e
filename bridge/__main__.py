"""``python -m bridge`` runs the ``signal-bridge`` command."""

import sys

from bridge.ops.cli import main

sys.exit(main())
