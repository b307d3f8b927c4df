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

Activation checkpointing (issue #21.1; config ``checkpointing``): each measurement runs one
mode in a fresh subprocess (one CPU thread), which reports the growth of its peak RSS
(``ru_maxrss``) over the training steps and each step's wall time. In the default run
``test_checkpointing_128`` times one step with and one without at 128x128 (paper width,
blocks and latents, 8 resolutions); with ``--benchmark-enable`` it alternates the modes over
three rounds of two steps (the first of each subprocess left out as warm-up) and adds
``"resolution"``, and ``test_checkpointing_paper_config`` runs the paper config (256x256,
9 x 5) with ``checkpointing: block``, the only way it fits this 24 GB machine (without, the
issue measured 18.8 GB). Targets: peak at most 6 GB, step at most 1.35x the step without
(measured at 128x128: the plain step at 256x256 does not fit beside other work here).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import torch

from bench_core.api import DataSpec, merge_config
from bench_core.timing import Timing, benchmark_throughput
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
        benchmark, fn, items=batch, timing=Timing(DEVICE, rounds=rounds),
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


# -- activation checkpointing (issue #21.1) -----------------------------------------------------

_STEP_SCRIPT = """
import json, os, resource, sys, time
import torch
from bench_core.api import DataSpec, merge_config
from bench_plugins.models.phvae import PHVAE
size, n_res, mode, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
torch.manual_seed(0)
spec = DataSpec(("A", "B"), (3, 1), 2, (size, size), (-1.0, 1.0), {"train": 7988})
config = merge_config(PHVAE.configs["ndvi-rgb-nll"], {"n_resolutions": n_res, "checkpointing": mode})
model = PHVAE(config, spec).train()
(stage,) = model.stages()
optimizer = torch.optim.Adamax(stage.parameters(), lr=stage.optimizer.lr)
for p in model.parameters():  # the gradients and Adamax state exist before the first measured step
    p.grad = torch.zeros_like(p)
optimizer.step()  # zero gradients: Adamax leaves the weights as they are
g = torch.Generator().manual_seed(0)
batch = {"A": torch.rand(1, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(1, 1, size, size, generator=g) * 2 - 1}
before = peak_mb()
seconds, losses = [], []
for _ in range(steps):
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = stage.loss(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
    optimizer.step()
    seconds.append(time.perf_counter() - start)
    losses.append(loss.item())
print(json.dumps({"before_mb": before, "peak_mb": peak_mb(), "seconds": seconds, "losses": losses}))
"""

PAPER_PEAK_TARGET_MB = 6e9 / 2**20  # issue #21.1: at most 6 GB with checkpointing on
TIME_RATIO_TARGET = 1.35  # ... at most 1.35x the step time without
ISSUE_PLAIN_PEAK_GB = 18.8  # the issue's measurement of the paper config without checkpointing


def _steps_in_subprocess(size: int, n_resolutions: int, mode: str, steps: int) -> dict:
    """Train ``steps`` batch-1 steps of the paper config at ``size`` in a fresh process (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _STEP_SCRIPT, str(size), str(n_resolutions), mode, str(steps)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env, timeout=1800)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["growth_mb"] = result["peak_mb"] - result["before_mb"]
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _checkpointing_runs(size: int, n_resolutions: int, modes: list[str], rounds: int, steps: int) -> dict[str, dict]:
    """Per mode: the subprocesses' peak RSS (largest over rounds) and step times (warm-up steps left out)."""
    skip = 1 if steps > 1 else 0
    out = {m: {"seconds": [], "peak_mb": 0.0, "growth_mb": 0.0} for m in modes}
    for _ in range(rounds):
        for mode in modes:  # modes alternate, so a change of the machine's load falls on all of them
            run = _steps_in_subprocess(size, n_resolutions, mode, steps)
            assert all(abs(loss) < 1e6 for loss in run["losses"])
            out[mode]["seconds"] += run["seconds"][skip:]
            out[mode]["peak_mb"] = max(out[mode]["peak_mb"], run["peak_mb"])
            out[mode]["growth_mb"] = max(out[mode]["growth_mb"], run["growth_mb"])
            out[mode]["first_loss"] = run["losses"][0]
    for mode in modes:
        out[mode]["median_s"] = _median(out[mode]["seconds"])
    return out


@pytest.mark.benchmark(group="phvae-checkpointing")
def test_checkpointing_128(benchmark) -> None:
    """128x128, paper width/blocks/latents (8 resolutions), batch 1, fp32: with and without checkpointing."""
    if DEVICE.type != "cpu":
        pytest.skip("the checkpointing benchmark measures the CPU's peak RSS in subprocesses")
    enabled = not benchmark.disabled
    modes = ["none", "block", "resolution"] if enabled else ["none", "block"]
    load_before = os.getloadavg()
    start = time.perf_counter()
    runs = benchmark.pedantic(
        _checkpointing_runs, args=(128, 8, modes, 3 if enabled else 1, 2 if enabled else 1), rounds=1, iterations=1
    )
    ratios = {m: runs[m]["median_s"] / runs["none"]["median_s"] for m in modes}
    benchmark.extra_info.update(
        setting="paper width/blocks/latents at 128x128 (8 resolutions), batch 1, fp32, 1 thread, a process per run",
        runs=runs, time_ratio_to_none=ratios, load_before=load_before, load_after=os.getloadavg(),
        wall_s=time.perf_counter() - start,
    )  # fmt: skip
    for m in modes:
        r = runs[m]
        print(
            f"phvae 128x128 checkpointing={m}: peak RSS {r['peak_mb']:.0f} MB (grown {r['growth_mb']:.0f} MB), "
            f"step {r['median_s']:.2f} s ({len(r['seconds'])} steps), {ratios[m]:.2f}x none; "
            f"load {load_before} -> {os.getloadavg()}"
        )  # fmt: skip
    # Identical arithmetic, so the same loss; far less memory kept for the backward pass.
    assert runs["block"]["first_loss"] == runs["none"]["first_loss"]
    assert runs["block"]["growth_mb"] < runs["none"]["growth_mb"] / 3
    if enabled:
        assert ratios["block"] <= TIME_RATIO_TARGET


@pytest.mark.benchmark(group="phvae-checkpointing")
def test_checkpointing_paper_config(benchmark) -> None:
    """The paper config (256x256, 9 x 5, batch 1, fp32) with ``checkpointing: block``: peak RSS and step time."""
    if benchmark.disabled:
        pytest.skip("the paper-config step (about 5 GB and 2 minutes on one thread) runs with --benchmark-enable")
    if DEVICE.type != "cpu":
        pytest.skip("the checkpointing benchmark measures the CPU's peak RSS in subprocesses")
    load_before = os.getloadavg()
    run = benchmark.pedantic(_steps_in_subprocess, args=(256, 9, "block", 2), rounds=1, iterations=1)
    step_s = run["seconds"][-1]
    benchmark.extra_info.update(
        setting="paper config 256x256, 9 resolutions x 5 blocks, batch 1, fp32, 1 thread, checkpointing block",
        peak_rss_mb=run["peak_mb"], peak_growth_mb=run["growth_mb"], step_s=step_s, seconds=run["seconds"],
        without_checkpointing=f"{ISSUE_PLAIN_PEAK_GB} GB peak RSS (issue #21.1; not run here)",
        load_before=load_before, load_after=os.getloadavg(),
    )  # fmt: skip
    print(
        f"phvae 256x256 paper config, checkpointing=block: peak RSS {run['peak_mb']:.0f} MB "
        f"(grown {run['growth_mb']:.0f} MB; without: {ISSUE_PLAIN_PEAK_GB} GB per the issue), "
        f"step {step_s:.1f} s (steps {[round(s, 1) for s in run['seconds']]}); load {load_before} -> {os.getloadavg()}"
    )  # fmt: skip
    assert run["peak_mb"] <= PAPER_PEAK_TARGET_MB
