"""Where a number came from: git commit, package versions, device, seeds."""

from __future__ import annotations

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
    """Device, GPU name, driver/CUDA versions and thread count for ``device``."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
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


def environment(device: str, suite_path: str | Path | None = None) -> dict[str, Any]:
    """Everything a report needs to say how a run was made."""
    where = Path(suite_path).resolve().parent if suite_path else Path.cwd()
    return {"git": git_state(where), "packages": package_versions(), **device_info(device)}
