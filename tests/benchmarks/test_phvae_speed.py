"""Speed and peak memory of the ``phvae`` plugin at the paper's ``ndvi-rgb-nll`` config.

Run with ``pytest tests/benchmarks --benchmark-enable``; under the project's default
``--benchmark-disable`` each benchmark runs once as a plain test. ``BENCH_DEVICE`` selects
the device (default ``cpu``). Timing is ``bench_core.timing.benchmark_throughput``'s
(CUDA-synchronised rounds after one warm-up); throughput lands in ``extra_info["images_per_s"]``,
peak memory in ``extra_info["peak_memory_mb"]``.

On CUDA the benchmark runs the paper setting: 256x256, width 72, 9 resolutions x 5 blocks,
fp16 autocast with a gradient scaler. Training steps use batch 1, the source's per-forward
footprint (it accumulates 5 of them); the engine's default batch 5 holds about five times the
activations. On a CPU one fp32 training step at 256x256 took 85 s and over 20 GB of memory
(2 threads), so there the benchmark keeps the paper's width, blocks and latents but runs
64x64 images (7 resolutions, 64 ... 1); ``extra_info`` says which setting ran.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable

import pytest
import torch

from bench_core.api import DataSpec, merge_config
from bench_core.timing import benchmark_throughput
from bench_plugins.models.phvae import PHVAE

CONFIG = "ndvi-rgb-nll"
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
CUDA = DEVICE.type == "cuda"
SIZE = 256 if CUDA else 64
OVERRIDES = {} if CUDA else {"n_resolutions": 7}
TRAIN_BATCH = 1
INFER_BATCH = 1  # the source's test script runs batch 1
SETTING = "paper (256x256)" if CUDA else "paper width/blocks/latents at reduced resolution 64x64 (7 resolutions)"
TASKS = {"A2A": ("A", "A"), "B2B": ("B", "B"), "A2B": ("A", "B"), "B2A": ("B", "A")}


def _model() -> PHVAE:
    torch.manual_seed(0)
    spec = DataSpec(("A", "B"), (3, 1), 2, (SIZE, SIZE), (-1.0, 1.0), {"train": 7988})
    return PHVAE(merge_config(PHVAE.configs[CONFIG], OVERRIDES), spec).to(DEVICE)


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "A": (torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1).to(DEVICE),
        "B": (torch.rand(n, 1, SIZE, SIZE, generator=g) * 2 - 1).to(DEVICE),
    }


def _maxrss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _run(benchmark, fn: Callable[[], object], batch: int, rounds: int, **extra: object) -> None:
    """Time ``fn`` on ``batch`` images with the shared protocol and record the peak memory of all its calls."""
    if CUDA:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    rss_before = _maxrss_mb()
    benchmark_throughput(
        benchmark, fn, items=batch, device=DEVICE, rounds=rounds,
        config=CONFIG, setting=SETTING, batch_size=batch, input_shape={"A": [3, SIZE, SIZE], "B": [1, SIZE, SIZE]},
        precision="amp (fp16 autocast + GradScaler)" if CUDA else "fp32", **extra,
    )  # fmt: skip
    if CUDA:
        benchmark.extra_info["peak_memory_mb"] = torch.cuda.max_memory_allocated(DEVICE) / 2**20
        benchmark.extra_info["memory_protocol"] = "torch.cuda.max_memory_allocated"
    else:
        benchmark.extra_info["peak_memory_mb"] = _maxrss_mb() - rss_before
        benchmark.extra_info["memory_protocol"] = (
            "growth of the process's peak RSS (getrusage ru_maxrss) during the benchmark; "
            "0 when an earlier test already reached a higher peak"
        )


@pytest.mark.benchmark(group="phvae")
def test_train_step_speed(benchmark) -> None:
    """Forward (reconstructions + translations), backward, clipping at 300 and an Adamax step."""
    model = _model().train()
    (stage,) = model.stages()
    optimizer = torch.optim.Adamax(stage.parameters(), lr=stage.optimizer.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=CUDA)
    batch = _batch(TRAIN_BATCH)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=CUDA):
            loss = stage.loss(batch)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())

    _run(benchmark, step, TRAIN_BATCH, rounds=3 if CUDA else 2)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.benchmark(group="phvae")
@pytest.mark.parametrize("task", list(TASKS))
def test_inference_speed(benchmark, task: str) -> None:
    """One evaluation task (temperature 0, no gradients) on a batch of 1, as the source's test script."""
    model = _model().eval()
    source, target = TASKS[task]
    x = _batch(INFER_BATCH)[source]
    outputs: list[torch.Tensor] = []

    def infer() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=CUDA):
            outputs.append(model.translate(x, source, target))

    _run(benchmark, infer, INFER_BATCH, rounds=5, task=task)
    y = outputs[-1]
    assert y.shape == (INFER_BATCH, 3 if target == "A" else 1, SIZE, SIZE)
