"""Where a number came from: git commit, package versions, device, CPU thread settings, seeds.

Also where the engine chooses those thread settings (:func:`choose_thread_settings`), so the
choice and its record live side by side.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = (
    "medgen-bench",
    "torch",
    "torchvision",
    "numpy",
    "scikit-image",
    "pytorch-fid",
    "nibabel",
    "pluggy",
)
# Names of the OpenMP variables the engine set (comma-separated); inherited by torchrun's workers so
# their provenance says "engine", not "user", for values their launcher chose.
ENGINE_SET_VARS = "BENCH_THREADS_SET_BY_ENGINE"


def git_state(path: str | Path = ".") -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (``None`` outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that change numbers."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info(device: str) -> dict[str, Any]:
    """Device, GPU name, driver/CUDA versions and CPU thread settings for ``device``."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        **thread_settings(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota visible
        pass
    return cores


def choose_thread_settings() -> None:
    """Set OpenMP's thread count and wait policy for this process and its children, unless the user did.

    ``OMP_NUM_THREADS`` becomes the usable core count and ``OMP_WAIT_POLICY`` ``PASSIVE``:
    OpenMP's default lets idle threads spin, which on a CPU shared with another busy process
    makes a training step many times slower (README, "CPU threads"). OpenMP reads both once,
    when torch loads, so this does nothing once torch is imported (the record then says
    "default" for whatever the user did not set). Torch-free; ``bench`` calls it first.
    """
    if "torch" in sys.modules:
        return
    ours = set(filter(None, os.environ.get(ENGINE_SET_VARS, "").split(",")))
    for name, value in (("OMP_NUM_THREADS", str(usable_cores())), ("OMP_WAIT_POLICY", "PASSIVE")):
        if name not in os.environ:
            os.environ[name] = value
            ours.add(name)
    if ours:
        os.environ[ENGINE_SET_VARS] = ",".join(sorted(ours))


def set_by(name: str) -> str:
    """Who chose the environment variable ``name``: ``engine``, ``user`` or ``default`` (unset)."""
    if name not in os.environ:
        return "default"
    return "engine" if name in os.environ.get(ENGINE_SET_VARS, "").split(",") else "user"


def thread_settings() -> dict[str, Any]:
    """torch's CPU thread count and OpenMP's wait policy, each with who chose it."""
    import torch

    threads = torch.get_num_threads()
    threads_by = set_by("OMP_NUM_THREADS")
    if threads_by != "default" and os.environ["OMP_NUM_THREADS"].split(",")[0].strip() != str(threads):
        threads_by = "torch.set_num_threads"  # the program changed it after start-up
    return {
        "torch_threads": threads,
        "torch_threads_set_by": threads_by,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "OpenMP default"),
        "omp_wait_policy_set_by": set_by("OMP_WAIT_POLICY"),
        "usable_cores": usable_cores(),
    }


def environment(device: str, suite_path: str | Path | None = None) -> dict[str, Any]:
    """Everything a report needs to say how a run was made."""
    where = Path(suite_path).resolve().parent if suite_path else Path.cwd()
    return {"git": git_state(where), "packages": package_versions(), **device_info(device)}
