"""`python -m m2fp_client`: the client's command line (see m2fp_client/cli.py)."""

import sys

from m2fp_client.cli import main

sys.exit(main())
