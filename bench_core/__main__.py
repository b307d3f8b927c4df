"""``python -m bench_core`` runs the ``bench`` CLI (also under torchrun)."""

import sys

from bench_core.cli import main

sys.exit(main())
