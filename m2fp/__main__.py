"""`python -m m2fp`: see m2fp/cli.py and docs/cli.md."""

from m2fp.cli import main

raise SystemExit(main())
