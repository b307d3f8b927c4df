"""Metric tests never touch the user's cache: the engine cache (and the on-disk Inception features) go to tmp."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """Point ``$BENCH_CACHE_DIR`` at a fresh folder for each test."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("bench-cache")))
