"""`python -m saelab.cli ...` (also `torchrun ... -m saelab.cli ...`) runs the command line."""

import sys

from saelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
