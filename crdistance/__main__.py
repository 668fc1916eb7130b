"""``python -m crdistance``: the ``crdistance`` command (see :mod:`crdistance.cli`)."""

import sys

from crdistance.cli import main

if __name__ == "__main__":
    sys.exit(main())
