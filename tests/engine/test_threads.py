"""The engine's CPU thread settings: chosen by the ``bench`` entry when the user did not, and recorded (issue #21)."""

import json
import os
import subprocess
import sys

import pytest

from bench_core.cli import main
from bench_core.provenance import ENGINE_SET_VARS, usable_cores

# Runs the CLI entry (as `bench --version`), then loads torch and prints what provenance records.
ENTRY_THEN_PROVENANCE = (
    "import json\nfrom bench_core.cli import main\nmain(['--version'])\n"
    "from bench_core.provenance import thread_settings\nprint(json.dumps(thread_settings()))"
)


def settings_after_entry(**user: str) -> dict:
    """Thread settings a fresh process records after the CLI entry, with ``user`` as the only OpenMP variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", ENGINE_SET_VARS)}
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_THEN_PROVENANCE], env={**env, **user}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, {"omp_wait_policy": "PASSIVE", "omp_wait_policy_set_by": "engine", "torch_threads_set_by": "engine"}),
        (
            {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"},
            {"omp_wait_policy": "ACTIVE", "omp_wait_policy_set_by": "user", "torch_threads_set_by": "user"},
        ),
    ],
    ids=["unset-engine-chooses", "user-set-kept"],
)
def test_cli_entry_sets_thread_settings_only_when_the_user_did_not(user, expected):
    settings = settings_after_entry(**user)
    assert {k: settings[k] for k in expected} == expected
    assert settings["torch_threads"] == int(user.get("OMP_NUM_THREADS", usable_cores()))  # torch took the count
    assert settings["usable_cores"] == usable_cores()


def test_cli_entry_leaves_settings_alone_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (the case under test: torch and its OpenMP runtime are loaded)

    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", ENGINE_SET_VARS):
        monkeypatch.delenv(name, raising=False)
    assert main(["--version"]) == 0
    # Setting them now would change nothing in the loaded OpenMP runtime and make the record lie.
    assert not {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", ENGINE_SET_VARS} & set(os.environ)
