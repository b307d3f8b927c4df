"""Helpers of the executor tests (imported by the test modules)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def slow_model(steps: int = 24, sleep: float = 0.25, every: int = 3) -> dict:
    """A toy model entry whose training takes ``steps * sleep`` seconds, checkpointed every ``every`` steps."""
    return {"plugin": "toy-ae", "params": {"sleep": sleep}, "budget": {"steps": steps, "checkpoint_every": every}}


def wait_for(test: Callable[[], object], timeout: float, what: str, step: float = 0.3):
    """Poll ``test`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def query(store: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` on a results store, read-only."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
