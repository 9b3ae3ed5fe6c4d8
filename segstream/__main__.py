"""``python -m segstream``: the same as the ``segstream`` console script."""

import sys

from segstream.cli import main

if __name__ == "__main__":  # importing the module (documentation tools do) runs nothing
    sys.exit(main())
