import sys

from bench.compat.cli import main

sys.exit(main())
