"""``python -m privlab`` runs the ``privlab`` command."""

import sys

from privlab.cli import main

sys.exit(main())
