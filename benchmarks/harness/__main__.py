"""``python -m benchmarks.harness ARGS`` (from the repository root) ≡ ``mtl-fast bench ARGS``."""

import sys

from .cli import main

sys.exit(main(prog="python -m benchmarks.harness"))
