"""Fixtures of the executor tests: a real single-node Slurm cluster, `bench` runs against it, toy suites.

The ``slurm`` fixture installs Debian's slurm and munge packages when they are missing (root and
apt-get only; otherwise the Slurm tests skip, saying why), starts munged, slurmctld and slurmd
for the session (:mod:`slurm_cluster`) and stops what it started. After each Slurm test every job
left on that private cluster is cancelled, so a failing test does not hold the next one's CPUs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
ENGINE = HERE.parent / "engine"  # fakeplugins.py and toy_suites.py
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ENGINE))

import slurm_cluster  # noqa: E402
from toy_suites import toy_suite  # noqa: E402


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm cluster (skips the test where Slurm cannot be installed or started)."""
    try:
        slurm_cluster.install()
        cluster = slurm_cluster.start()
    except slurm_cluster.Unavailable as exc:
        pytest.skip(f"no Slurm here: {exc}")
    except slurm_cluster.StartFailed as exc:
        pytest.fail(f"Slurm is installed but did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(slurm, bench_env):
    """``bench_env`` pointing Slurm's commands (and the jobs, which inherit it) at the test cluster."""
    env = {**bench_env, "SLURM_CONF": str(slurm.conf)}
    yield env
    subprocess.run(["scancel", "--quiet", "-u", "root"], env=env, capture_output=True, timeout=30, check=False)


@pytest.fixture
def bench(tmp_path: Path):
    """Run `python -m bench_core -p fakeplugins ARGS` in tmp_path with ``env``; return the CompletedProcess."""

    def run(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bench_core", "-p", "fakeplugins", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    return run


@pytest.fixture
def suite_file(tmp_path: Path):
    """Write a toy suite (``toy_suite(**overrides)``) as YAML into tmp_path; return its path."""

    def write(name: str = "suite.yaml", **overrides) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(toy_suite(**overrides), sort_keys=False))
        return path

    return write
