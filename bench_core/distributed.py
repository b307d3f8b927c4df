"""Data-parallel training across processes with torch.distributed (torchrun).

``bench run --nproc N`` re-launches itself under ``torch.distributed.run``; every rank
runs the same cells. Rank 0 alone claims cells and writes checkpoints, images and result
rows; the other ranks follow its decisions (broadcast). Evaluation is sharded: each rank
runs the model on its share of the test split and rank 0 gathers the outputs and feeds
the metrics, so metrics are reduced over every rank's items exactly as in one process.

Gradients are averaged with bucketed all-reduces after ``backward`` instead of wrapping
the model in ``DistributedDataParallel``: a stage's loss is an arbitrary closure over the
model's submodules (VQ-VAE then priors, paired VAEs), not a call of ``forward``, which
is what DDP's hooks need. The arithmetic is the same as DDP's: every rank applies the
mean gradient, so parameters stay identical across ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from bench_core.provenance import set_by, usable_cores

T = TypeVar("T")


def world_size() -> int:
    """Number of processes of this run (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and results."""
    return rank() == 0


def init_from_env(device_name: str) -> torch.device | None:
    """Join the process group torchrun describes in the environment; return this rank's device.

    Returns ``None`` when the process was not started by torchrun (``WORLD_SIZE`` unset or 1).
    NCCL is used with CUDA devices, gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide(choose: Callable[[], T]) -> T:
    """Rank 0's ``choose()`` on every rank: rank 0 decides (claims, which weights exist), the others follow.

    ``choose`` runs on rank 0 only, so it may read what only rank 0 holds (the results store).
    """
    return broadcast_object(choose() if is_main() else None)


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; ``None`` on the other ranks."""
    if world_size() == 1:
        return [obj]
    box: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, box, dst=0)
    return box


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank, so all ranks take the same branch."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient with its mean over ranks (one flattened all-reduce per dtype)."""
    n = world_size()
    if n == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (start of training, BN statistics)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# Signals the launcher passes on to torchrun: Ctrl-C, kill/scheduler stop, terminal hang-up.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Forwarder:
    """Signal handler of the launcher: pass the first signal to torchrun, once; ignore repeats.

    torchrun answers SIGINT/SIGTERM/SIGHUP by signalling its workers, waiting for them
    (SIGKILL after 30 s) and exiting. A second signal raised inside that clean-up would cut it
    short and orphan the workers (they run in sessions of their own), so it is never sent.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.received: list[int] = []
        self.missed = False  # a signal came before torchrun was started

    def __call__(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            print("bench: still stopping the workers, waiting for them to exit", file=sys.stderr, flush=True)
        elif self.proc is None:
            self.missed = True
        else:
            self.proc.send_signal(signum)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``bench`` with ``argv`` under torchrun with ``nproc`` processes on this node.

    Returns torchrun's exit code, or 130 (128 + the signal for SIGTERM/SIGHUP) when the
    launcher was signalled; it returns only after torchrun, and so every worker, has exited.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "bench_core", *argv]
    # `python -m` puts the working directory first on sys.path, so a torch.py (or bench_core/) there
    # would run in torchrun and in every worker; PYTHONSAFEPATH (Python 3.11+) leaves it out, and
    # torchrun passes its environment on to the workers (issue #14).
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if set_by("OMP_NUM_THREADS") == "engine":  # the engine's count was for one process: share the cores
        env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // nproc))
    forwarder = _Forwarder()
    previous = {sig: signal.signal(sig, forwarder) for sig in FORWARDED_SIGNALS}
    try:
        # torchrun gets a session of its own so that it receives exactly one signal, the launcher's.
        # In the launcher's process group a terminal's Ctrl-C reached it as well, and a SIGINT sent
        # to the launcher alone did not reach it at all; subprocess.call then SIGKILLed it 0.25 s
        # after KeyboardInterrupt, before it had stopped its workers, which kept training (issue #7).
        forwarder.proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        if forwarder.missed:
            forwarder.proc.send_signal(forwarder.received[0])
        code = forwarder.proc.wait()  # the handler runs during the wait; PEP 475 resumes it
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if forwarder.received:
        return 130 if forwarder.received[0] == signal.SIGINT else 128 + forwarder.received[0]
    return code
