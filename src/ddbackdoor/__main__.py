"""`python -m ddbackdoor ...`, the same as the `ddbackdoor` command."""

import sys

from .cli import main

sys.exit(main())
