"""Speed of the ``vqvae`` plugin at its ``seed003-hipmri`` config on 1x256x128 images.

Run with ``pytest tests/benchmarks --benchmark-enable``; under the project's default
``--benchmark-disable`` each benchmark runs once as a plain test. ``BENCH_DEVICE``
selects the device (default ``cpu``). Timing is ``bench_core.timing.benchmark_throughput``'s
(CUDA-synchronised rounds after one warm-up); throughput lands in ``extra_info["images_per_s"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from bench_core.api import DataSpec
from bench_core.timing import Timing, benchmark_throughput
from bench_plugins.models.vqvae import VQVAE

CONFIG = "seed003-hipmri"
SHAPE = (256, 128)
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
# A batch-16 training step takes about 6 s on a 2-core CPU, too slow to repeat: use 4 there.
TRAIN_BATCH = 16 if DEVICE.type == "cuda" else 4
DECODE_BATCH = 16


def _model() -> VQVAE:
    torch.manual_seed(0)
    spec = DataSpec(("image",), (1,), 2, SHAPE, (0.0, 1.0))
    return VQVAE(VQVAE.configs[CONFIG], spec).to(DEVICE)


def _run(benchmark, fn: Callable[[], object], batch: int) -> None:
    """Time ``fn`` on ``batch`` images with the shared protocol, recording the config beside the throughput."""
    benchmark_throughput(
        benchmark, fn, items=batch, timing=Timing(DEVICE, rounds=3), config=CONFIG, batch_size=batch,
        input_shape=[1, *SHAPE],
    )  # fmt: skip


@pytest.mark.benchmark(group="vqvae")
def test_train_step_speed(benchmark) -> None:
    """Forward, backward and Adam step on one batch."""
    model = _model().train()
    (stage,) = model.stages()
    optimizer = torch.optim.Adam(stage.parameters(), lr=stage.optimizer.lr)
    batch = {"image": torch.rand(TRAIN_BATCH, 1, *SHAPE, device=DEVICE)}
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = stage.loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    _run(benchmark, step, TRAIN_BATCH)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.benchmark(group="vqvae")
def test_decode_speed(benchmark) -> None:
    """Decoding a batch of code grids to images (eval mode, no gradients)."""
    model = _model().eval()
    latent = tuple(s // 2 ** VQVAE.configs[CONFIG]["n_down"] for s in SHAPE)
    n_codes = VQVAE.configs[CONFIG]["n_embeddings"]
    codes = torch.randint(n_codes, (DECODE_BATCH, *latent), generator=torch.Generator().manual_seed(0))
    codes = codes.to(DEVICE)
    outputs: list[torch.Tensor] = []

    def decode() -> None:
        with torch.no_grad():
            outputs.append(model.decode_codes(codes))

    _run(benchmark, decode, DECODE_BATCH)
    images = outputs[-1]
    assert images.shape == (DECODE_BATCH, 1, *SHAPE)
