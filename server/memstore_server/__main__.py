"""``python -m memstore_server`` is the ``memstore-server`` command."""

import sys

from memstore_server.cli import main

sys.exit(main())
