"""``python -m segstream``: the same as the ``segstream`` console script."""

import sys

from segstream.cli import main

sys.exit(main())
