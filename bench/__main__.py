import sys

from bench.cli import main

# guarded: executors start children with multiprocessing's "spawn", which re-imports the
# main module (as __mp_main__) in each child
if __name__ == "__main__":
    sys.exit(main())
