"""``python -m bioattn.cli``: the same as the ``bioattn`` command."""

import sys

from bioattn.cli import main

sys.exit(main())
