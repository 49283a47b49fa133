"""`python -m ufm`: the `ufm` command (`ufm.cli`)."""
import sys

from ufm.cli import main

sys.exit(main())
