"""`python -m saelab ...` runs the command line (also under torchrun: `torchrun ... -m saelab train ...`)."""

import sys

from saelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
