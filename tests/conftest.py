"""Tests never write into the user's cache folder.

Unless ``BENCH_CACHE_DIR`` is already set (CI sets it to a folder of the clone), the
session points it at a fresh temporary folder before any test runs; test packages that
need a private cache per test set their own on top.
"""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    """Point ``BENCH_CACHE_DIR`` at a session folder when it is unset."""
    if not os.environ.get("BENCH_CACHE_DIR"):
        os.environ["BENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="medgen-bench-tests-")
