"""Torch utilities shared by the trainer, the evaluator and the runner.

Devices, precision (autocast and the fp16 switch), seeding and random-state capture,
batches moved to a device, peak memory and ``torch.compile`` of a model's children:
nothing here knows about stages, tasks or metrics.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from bench_core.api import BenchError

FORCE_AMP_ENV = "BENCH_FORCE_AMP"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("suite asks for device: cuda but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device indices whose random state belongs to ``device`` (none on the CPU)."""
    return [device.index or 0] if device.type == "cuda" else []


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask for deterministic kernels where they exist."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) random states as tensors and plain values (weights-only loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore random states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_len(batch: dict[str, Any]) -> int:
    """The number of items of a collated batch (the first tensor's leading size; 0 without tensors)."""
    for v in batch.values():
        if torch.is_tensor(v):
            return int(v.shape[0])
    return 0


def fp16_amp(device: torch.device, precision: str) -> bool:
    """Whether ``precision`` runs as fp16 with a gradient scaler: amp on CUDA, or with ``$BENCH_FORCE_AMP``."""
    forced = os.environ.get(FORCE_AMP_ENV, "") not in ("", "0")
    return precision == "amp" and (device.type == "cuda" or forced)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for ``precision`` (fp32 disables it)."""
    if fp16_amp(device, precision):
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("bf16", "amp"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory so far in MiB and what was measured (CUDA allocator, or process peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated during the stage"
    import resource

    # ru_maxrss is KiB on Linux: the process's peak resident set, so an upper bound for the stage.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss) up to stage end"


def compile_children(model: torch.nn.Module, backend: str = "inductor") -> list[str]:
    """``torch.compile`` the model's outermost callable submodules in place; return their names.

    Submodules rather than the model: stage losses and capability methods call the
    submodules (encoder, quantiser, priors), not ``model.forward``, so compiling the
    children is what makes those calls compiled. A child without a ``forward`` of its own (a
    ``ModuleList``, a branch whose parts are called one by one) is never called itself, and
    compiling it would change nothing: its children are compiled instead, down to modules
    that define ``forward`` (phvae's ``branches.0.encoder``, ...).
    """
    names = []
    for name, child in model.named_children():
        if type(child).forward is torch.nn.Module.forward:
            names += [f"{name}.{inner}" for inner in compile_children(child, backend)]
        else:
            child.compile(backend=backend)
            names.append(name)
    return names
