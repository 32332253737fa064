"""``python -m glance_lite`` is the ``glance-lite`` command."""

import sys

from .cli import main

sys.exit(main())
