"""``python -m ml_patterns_app.cli``: the ``ml-patterns`` command."""

import sys

from ml_patterns_app.cli import main

sys.exit(main())
