"""Shared fixtures of the engine tests: a CLI runner and toy suites in temp folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def run_bench(bench_env, tmp_path):
    """Run `python -m bench_core ARGS` in tmp_path; return the CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bench_core", "-p", "fakeplugins", *args],
            cwd=tmp_path, env=env or bench_env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    return run


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite dict as YAML into tmp_path and return its path."""

    def write(data: dict, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
