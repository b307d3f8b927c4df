"""Tests never write into the user's cache folder.

Unless ``BENCH_CACHE_DIR`` is already set (CI sets it to a folder of the clone), the
session points it at a fresh temporary folder before any test runs; test packages that
need a private cache per test set their own on top.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ENGINE_TESTS = Path(__file__).parent / "engine"  # fakeplugins.py: the toy plugins of the engine tests


def pytest_configure(config) -> None:
    """Point ``BENCH_CACHE_DIR`` at a session folder when it is unset."""
    if not os.environ.get("BENCH_CACHE_DIR"):
        os.environ["BENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="medgen-bench-tests-")


@pytest.fixture
def bench_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `bench` subprocesses: the fake plugins importable, a private cache, the main store."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["BENCH_CACHE_DIR"] = str(tmp_path / "cache")
    env.pop("BENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("BENCH_STORE_FILE", None)  # a job's node-local store, never a test's
    return env


@pytest.fixture
def rgb16_png() -> Callable[[Path, np.ndarray], Path]:
    """Writes an ``(H, W, 3)`` uint16 array as a 16-bit RGB PNG, by hand (Pillow cannot write one)."""
    return _rgb16_png


def _rgb16_png(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    rows = b"".join(b"\0" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path
