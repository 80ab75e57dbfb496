"""`python -m engine` is `pluct-engine`."""

import sys

from engine.cli import main

sys.exit(main())
