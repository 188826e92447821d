"""``python -m bench.berthbench``: the harness's command line."""

from __future__ import annotations

import sys

from bench.berthbench.harness import main

if __name__ == "__main__":
    sys.exit(main())
