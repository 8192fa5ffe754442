"""`python -m gatewatch ...` is the `gatewatch` command."""

import sys

from gatewatch.app.cli import main

sys.exit(main())
