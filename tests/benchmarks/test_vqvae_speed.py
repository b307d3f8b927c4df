"""Speed of the ``vqvae`` plugin at its ``seed003-hipmri`` config on 1x256x128 images.

Run with ``pytest tests/benchmarks --benchmark-enable``; under the project's default
``--benchmark-disable`` each benchmark runs once as a plain test. ``BENCH_DEVICE``
selects the device (default ``cpu``). Throughput lands in ``extra_info["images_per_s"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

from bench_core.api import DataSpec
from bench_plugins.models.vqvae import VQVAE

T = TypeVar("T")

CONFIG = "seed003-hipmri"
SHAPE = (256, 128)
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
# A batch-16 training step takes about 6 s on a 2-core CPU, too slow to repeat: use 4 there.
TRAIN_BATCH = 16 if DEVICE.type == "cuda" else 4
DECODE_BATCH = 16


def _synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _model() -> VQVAE:
    torch.manual_seed(0)
    spec = DataSpec(("image",), (1,), 2, SHAPE, (0.0, 1.0))
    return VQVAE(VQVAE.configs[CONFIG], spec).to(DEVICE)


def _run(benchmark, fn: Callable[[], T], batch: int) -> T:
    benchmark.extra_info.update(
        config=CONFIG,
        batch_size=batch,
        input_shape=[1, *SHAPE],
        device=str(DEVICE),
        torch_threads=torch.get_num_threads(),
    )
    result = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean
    return result


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
        _synchronize()
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

    def decode() -> torch.Tensor:
        with torch.no_grad():
            images = model.decode_codes(codes)
        _synchronize()
        return images

    images = _run(benchmark, decode, DECODE_BATCH)
    assert images.shape == (DECODE_BATCH, 1, *SHAPE)
