"""``python -m sati.cli``: the same as the ``sati`` command."""

import sys

from sati.cli import main

sys.exit(main())
