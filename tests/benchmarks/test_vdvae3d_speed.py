"""Speed and peak memory of the ``vdvae3d`` plugin at the source's configs, batch 1.

Run with ``pytest tests/benchmarks --benchmark-enable``; under the project's default
``--benchmark-disable`` each benchmark runs once as a plain test. ``BENCH_DEVICE`` selects
the device (default ``cpu``); everything is CUDA-synchronised. Step timing is
``bench_core.timing.benchmark_throughput``'s (rounds after one warm-up; ``extra_info["images_per_s"]``).

Peak memory of one training step (forward, backward, per-sub-network clipping, Adamax):

- on CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, for the 32^3, 64^3 and
  128^3 configs (the source reports 31.9 GB for 128^3 at batch 1);
- on the CPU: the 32^3 config only, from ``torch.profiler`` with ``profile_memory=True``: every
  allocation and free of torch's CPU allocator during the second step, summed in time order;
  the maximum is the peak above the memory held before the step (weights, optimiser state).
  It counts tensors and the convolutions' im2col workspaces, not the Python runtime.
  (``tracemalloc`` does not see torch's allocations, and the process's peak RSS mixes in
  whatever glibc keeps cached.)

Both report with and without activation checkpointing, and the bytes autograd saved for the
backward pass. Values land in ``extra_info``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench_core.api import DataSpec, merge_config
from bench_core.timing import Timing, benchmark_throughput, synchronize
from bench_plugins.models.vdvae3d import VDVAE3D

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
BATCH = 1  # the source's 128^3 batch; one 32^3 CPU step takes about 4 s on one thread
MB = 2**20


@pytest.fixture(autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    # On a shared CPU, spin-waiting intra-op threads make timings swing; CUDA runs are unaffected.
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(config: str, checkpointing: bool, device: torch.device):
    """Model, a training-step function, the batch and the optimiser for one config at batch ``BATCH``."""
    torch.manual_seed(0)
    size = int(config)
    spec = DataSpec(("image",), (1,), 3, (size,) * 3, (-1.0, 1.0))
    model = VDVAE3D(merge_config(VDVAE3D.configs[config], {"checkpointing": checkpointing}), spec).to(device).train()
    (stage,) = model.stages()
    optimizer = torch.optim.Adamax(stage.parameters(), lr=stage.optimizer.lr)
    batch = {"image": torch.rand(BATCH, 1, size, size, size, device=device) * 2.0 - 1.0}

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = stage.loss(batch)["loss"]
        loss.backward()
        for group in stage.clip_groups():
            torch.nn.utils.clip_grad_norm_(list(group), stage.grad_clip)
        optimizer.step()
        return loss.item()

    return model, step, batch, optimizer


def _saved_bytes(model: VDVAE3D, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one loss."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(batch)
    return sum(saved.values())


@pytest.mark.benchmark(group="vdvae3d")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_train_step_speed(benchmark, checkpointing: bool) -> None:
    """Forward, backward, per-sub-network clipping and Adamax step of the 32^3 config."""
    _, step, _, _ = _setup("32", checkpointing, DEVICE)
    losses: list[float] = []

    benchmark_throughput(
        benchmark, lambda: losses.append(step()), items=BATCH, timing=Timing(DEVICE, rounds=3),
        config="32", batch_size=BATCH, input_shape=[1, 32, 32, 32], checkpointing=checkpointing,
    )  # fmt: skip
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def _cpu_peak(config: str, checkpointing: bool) -> dict[str, float | str]:
    model, step, batch, optimizer = _setup(config, checkpointing, torch.device("cpu"))
    saved = _saved_bytes(model, batch)
    # Allocate the optimiser state before the measured step without paying for a full warm-up
    # step: Adamax leaves the weights unchanged on zero gradients.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation and free of torch's CPU allocator, in time order: the running sum's maximum
    # is the step's peak above what was allocated before it. (The per-event timeline is only
    # reachable through the profiler's kineto results, as torch's own memory timeline reads it.)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return {
        "step_peak_mb": peak / MB,
        "saved_activations_mb": saved / MB,
        "protocol": "torch.profiler profile_memory: peak of the CPU allocator's running total over one step",
    }


def _cuda_peak(config: str, checkpointing: bool) -> dict[str, float | str]:
    model, step, batch, _ = _setup(config, checkpointing, DEVICE)
    saved = _saved_bytes(model, batch)
    step()  # the first step allocates the optimiser state and the cuDNN workspaces
    synchronize(DEVICE)
    torch.cuda.reset_peak_memory_stats(DEVICE)
    step()
    synchronize(DEVICE)
    return {
        "peak_allocated_mb": torch.cuda.max_memory_allocated(DEVICE) / MB,
        "saved_activations_mb": saved / MB,
        "protocol": "torch.cuda.max_memory_allocated over the second training step",
    }


@pytest.mark.benchmark(group="vdvae3d-memory")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("config", ["32", "64", "128"])
def test_train_step_peak_memory(benchmark, config: str, checkpointing: bool) -> None:
    """Peak memory of one training step; the timing of this benchmark is the measurement's own, not a metric."""
    if DEVICE.type != "cuda" and config != "32":
        pytest.skip(f"the {config}^3 peak is measured with torch.cuda.max_memory_allocated: needs BENCH_DEVICE=cuda")
    measure = _cuda_peak if DEVICE.type == "cuda" else _cpu_peak
    try:
        result = benchmark.pedantic(measure, args=(config, checkpointing), rounds=1, iterations=1)
    except torch.cuda.OutOfMemoryError:
        total = torch.cuda.get_device_properties(DEVICE).total_memory / MB
        pytest.skip(f"the {config}^3 config does not fit this GPU's {total:.0f} MB at batch {BATCH}")
    benchmark.extra_info.update(
        config=config, batch_size=BATCH, checkpointing=checkpointing, device=str(DEVICE), **result
    )
    assert result["saved_activations_mb"] > 0
