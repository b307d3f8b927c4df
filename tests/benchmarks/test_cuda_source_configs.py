"""Every built-in model at its source's config on CUDA, as a paper suite runs it: fp16 amp and torch.compile.

One training step per stage (forward, scaled backward, unscale, the stage's clipping, step,
scaler update) through the engine's own pieces (``build_optimizer``, ``autocast``,
``compile_children``), timed by ``bench_core.timing.benchmark_throughput``. The first GPU run
of ``pytest tests/benchmarks --benchmark-enable`` with ``BENCH_DEVICE=cuda`` gives the table;
on a CPU those cases skip, saying so. The same harness runs every model's ``tiny`` config on
the CPU in fp32 without compilation, so it is exercised where no GPU is.
"""

from __future__ import annotations

import os

import pytest
import torch
from model_cases import Case

from bench_core.api import DataSpec
from bench_core.timing import Timing, benchmark_throughput
from bench_core.torchutil import autocast, compile_children, to_device
from bench_core.trainer import build_optimizer
from bench_plugins.models.phvae import PHVAE
from bench_plugins.models.pixelcnn import PixelCNNVQVAE2
from bench_plugins.models.vdvae3d import VDVAE3D
from bench_plugins.models.vqvae import VQVAE
from bench_plugins.models.vqvae2 import VQVAE2

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
CUDA = DEVICE.type == "cuda"


# The sources' settings (../shared/specs/models.md): image sizes and per-step batches.
SOURCE_CASES = [
    Case(PHVAE, "ndvi-rgb-nll", (3, 1), (256, 256), 1),
    Case(VDVAE3D, "32", (1,), (32, 32, 32), 2),
    Case(VDVAE3D, "64", (1,), (64, 64, 64), 10),
    Case(VDVAE3D, "128", (1,), (128, 128, 128), 1),
    Case(VQVAE, "seed003-hipmri", (1,), (256, 128), 16),
    Case(VQVAE2, "seed004-hipmri", (1,), (256, 128), 16),
    Case(VQVAE2, "seed002-oasis", (1,), (256, 256), 16),
    Case(PixelCNNVQVAE2, "seed002-oasis", (1,), (256, 256), 16),
]
TINY_CASES = [
    Case(PHVAE, "tiny", (1, 1), (32, 32), 2),
    Case(VDVAE3D, "tiny", (1,), (16, 16, 16), 2),
    Case(VQVAE, "tiny", (1,), (64, 32), 4),
    Case(VQVAE2, "tiny", (1,), (64, 32), 4),
    Case(PixelCNNVQVAE2, "tiny", (1,), (64, 32), 4),
]


def _batch(case: Case, spec: DataSpec) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    batch: dict[str, object] = {m: torch.rand(case.batch, c, *case.shape, generator=g) * 2 - 1
                                for m, c in zip(spec.modalities, spec.channels, strict=True)}  # fmt: skip
    batch["id"] = [f"item_{i}" for i in range(case.batch)]
    return to_device(batch, DEVICE)


def _time_stages(benchmark, case: Case, precision: str, compile_model: bool) -> None:
    torch.manual_seed(0)
    spec = case.spec()
    model = case.cls(dict(case.cls.configs[case.config]), spec).to(DEVICE).train()
    compiled = compile_children(model) if compile_model else []
    batch = _batch(case, spec)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=precision == "amp")
    steps = []
    for stage in model.stages():
        params = [p for p in stage.parameters() if p.requires_grad]
        optimizer = build_optimizer(stage.optimizer, params)
        steps.append((stage, params, optimizer))
    losses: list[float] = []

    def step() -> None:
        for stage, params, optimizer in steps:  # every stage once, as the cell trains them in turn
            optimizer.zero_grad(set_to_none=True)
            with autocast(DEVICE, precision):
                loss = stage.loss(batch)["loss"]
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if stage.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))

    benchmark_throughput(
        benchmark, step, items=case.batch, timing=Timing(DEVICE, rounds=3, warmup_rounds=1),
        model=case.id, stages=[s.name for s, _, _ in steps], input_shape=list(case.shape), batch_size=case.batch,
        precision=precision, compiled=compiled or "no",
    )  # fmt: skip
    assert losses and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.benchmark(group="cuda-source-configs")
@pytest.mark.parametrize("case", SOURCE_CASES, ids=lambda c: c.id)
def test_source_config_train_step_amp_compiled(benchmark, case: Case) -> None:
    """The source config with fp16 amp and torch.compile: what ``suites/paper.yaml`` runs on a GPU."""
    if not CUDA:
        pytest.skip(f"{case.id} at its source size with fp16 amp and torch.compile: run with BENCH_DEVICE=cuda")
    _time_stages(benchmark, case, "amp", compile_model=True)


@pytest.mark.benchmark(group="cuda-source-configs")
@pytest.mark.parametrize("case", TINY_CASES, ids=lambda c: c.id)
def test_tiny_config_train_step_through_the_same_harness(benchmark, case: Case) -> None:
    """The harness above on each tiny config: fp32, uncompiled on CPU; amp and compiled on CUDA."""
    _time_stages(benchmark, case, "amp" if CUDA else "fp32", compile_model=CUDA)
