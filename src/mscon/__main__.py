"""``python -m mscon`` (and ``torchrun -m mscon``) runs the command line."""

import sys

from mscon.cli import main

if __name__ == "__main__":
    sys.exit(main())
