"""Dataset tests write caches (biobank-flair's volume cache) under a temporary folder, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``bench_core.api.cache_dir()`` at a fresh folder for each test."""
    folder = tmp_path_factory.mktemp("bench-cache")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(folder))
    return folder
