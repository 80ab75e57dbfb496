import sys

from pluct_conformance.cli import main

sys.exit(main())
