"""Speed of the ``vqvae2`` and ``pixelcnn`` plugins: training steps, decoding and prior sampling.

Run with ``pytest tests/benchmarks --benchmark-enable``; under the project's default
``--benchmark-disable`` each benchmark runs once as a plain test. ``BENCH_DEVICE`` selects
the device (default ``cpu``). Timing is ``bench_core.timing.benchmark_throughput``'s
(CUDA-synchronised rounds after one warm-up); throughput lands in ``extra_info["images_per_s"]``
(training, decoding) or ``extra_info["samples_per_s"]`` (sampling); batch sizes and shapes are recorded
next to it because CPU runs use small batches to stay fast.

Sampling runs twice, with the rows below the current one cropped away (``crop_rows=True``,
what ``sample`` does) and with the whole grid recomputed at every position, so the gain of
the cropping is visible. On CPU the ``seed002-oasis`` priors (128 channels, 20 layers) take
about half a second per bottom-grid position at 64x64, so there they sample a 16x16 image
(top 4x4, bottom 8x8 codes) at the source's widths and depths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from bench_core.api import DataSpec, merge_config
from bench_core.timing import Timing, benchmark_throughput
from bench_plugins.models.pixelcnn import PixelCNNVQVAE2
from bench_plugins.models.vqvae2 import VQVAE2

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
CUDA = DEVICE.type == "cuda"
# (config, input shape, batch on CUDA = the source's batch, batch on CPU)
TRAIN_CASES = [("seed004-hipmri", (256, 128), 10, 2), ("seed002-oasis", (64, 64), 64, 4)]
# channels_last only changes anything on CUDA.
LAYOUTS = [False, True] if CUDA else [False]
DECODE_BATCH = 16 if CUDA else 4
# (config, input shape, n) per device: the source notebook samples batches of 16.
SAMPLE_CASES = {
    "tiny": ((64, 32), 16 if CUDA else 4),
    "seed002-oasis": ((64, 64), 16) if CUDA else ((16, 16), 1),
}


@pytest.fixture(autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    # On a shared CPU, extra intra-op threads spin-wait on busy cores and make timings swing by
    # an order of magnitude: CPU runs use one thread (recorded in extra_info).
    threads = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(shape: tuple[int, int]) -> DataSpec:
    return DataSpec(("image",), (1,), 2, shape, (-1.0, 1.0))


@pytest.mark.benchmark(group="vqvae2-train")
@pytest.mark.parametrize("channels_last", LAYOUTS, ids=lambda v: "channels_last" if v else "contiguous")
@pytest.mark.parametrize(("config", "shape", "cuda_batch", "cpu_batch"), TRAIN_CASES, ids=lambda v: str(v))
def test_train_step_speed(benchmark, config: str, shape, cuda_batch: int, cpu_batch: int, channels_last: bool) -> None:
    """Forward, backward and Adam step of the VQ-VAE-2 on one batch."""
    torch.manual_seed(0)
    model = VQVAE2(merge_config(VQVAE2.configs[config], {"channels_last": channels_last}), _spec(shape)).to(DEVICE)
    (stage,) = model.stages()
    optimizer = torch.optim.Adam(stage.parameters(), lr=stage.optimizer.lr)
    batch_size = cuda_batch if CUDA else cpu_batch
    batch = {"image": torch.rand(batch_size, 1, *shape, device=DEVICE) * 2 - 1}
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = stage.loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    benchmark_throughput(
        benchmark, step, items=batch_size, timing=Timing(DEVICE, rounds=3),
        config=config, batch_size=batch_size, input_shape=[1, *shape], channels_last=channels_last,
    )  # fmt: skip
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.benchmark(group="vqvae2-decode")
def test_decode_speed(benchmark) -> None:
    """Decoding top and bottom code grids to 256x128 images at ``seed004-hipmri`` (eval, no gradients)."""
    config, shape = "seed004-hipmri", (256, 128)
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2.configs[config], _spec(shape)).to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    n_codes = VQVAE2.configs[config]["n_embeddings"]
    codes_t = torch.randint(n_codes, (DECODE_BATCH, 32, 16), generator=g).to(DEVICE)
    codes_b = torch.randint(n_codes, (DECODE_BATCH, 64, 32), generator=g).to(DEVICE)
    outputs: list[torch.Tensor] = []

    def decode() -> None:
        outputs.append(model.decode_codes(codes_t, codes_b))

    benchmark_throughput(
        benchmark, decode, items=DECODE_BATCH, timing=Timing(DEVICE, rounds=3),
        config=config, batch_size=DECODE_BATCH, input_shape=[1, *shape],
    )  # fmt: skip
    images = outputs[-1]
    assert images.shape == (DECODE_BATCH, 1, *shape)


# (prior, code grids (top, bottom), batch on CUDA = the source's batch, batch on CPU): seed002-oasis at 64x64.
PRIOR_CASES = [("top_prior", 64, 4), ("bottom_prior", 64, 2)]


@pytest.mark.benchmark(group="pixelcnn-prior-train")
@pytest.mark.parametrize(("prior", "cuda_batch", "cpu_batch"), PRIOR_CASES, ids=lambda v: str(v))
def test_prior_train_step_speed(benchmark, prior: str, cuda_batch: int, cpu_batch: int) -> None:
    """Forward, backward and Adam step of a ``seed002-oasis`` prior on given code grids (top 16x16, bottom 32x32)."""
    torch.manual_seed(0)
    model = PixelCNNVQVAE2(PixelCNNVQVAE2.configs["seed002-oasis"], _spec((64, 64))).to(DEVICE)
    module = getattr(model, prior)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    batch_size = cuda_batch if CUDA else cpu_batch
    g = torch.Generator().manual_seed(0)
    codes_t = torch.randint(512, (batch_size, *model.top_shape), generator=g).to(DEVICE)
    codes_b = torch.randint(512, (batch_size, *model.bottom_shape), generator=g).to(DEVICE)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if prior == "top_prior":
            loss = torch.nn.functional.cross_entropy(module(codes_t), codes_t)
        else:
            loss = torch.nn.functional.cross_entropy(module(codes_b, codes_t), codes_b)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    benchmark_throughput(
        benchmark, step, items=batch_size, timing=Timing(DEVICE, rounds=3),
        config="seed002-oasis", prior=prior, batch_size=batch_size, input_shape=[1, 64, 64],
    )  # fmt: skip
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.benchmark(group="pixelcnn-sample")
@pytest.mark.parametrize("crop_rows", [True, False], ids=["cropped_rows", "full_grid"])
@pytest.mark.parametrize("config", sorted(SAMPLE_CASES))
def test_sample_speed(benchmark, config: str, crop_rows: bool) -> None:
    """Raster-order sampling of top then bottom codes (temperature 1), without decoding."""
    shape, n = SAMPLE_CASES[config]
    torch.manual_seed(0)
    model = PixelCNNVQVAE2(PixelCNNVQVAE2.configs[config], _spec(shape)).to(DEVICE).eval()
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sample() -> None:
        outputs.append(model.sample_codes(n, 1.0, torch.Generator().manual_seed(0), crop_rows=crop_rows))

    benchmark_throughput(
        benchmark, sample, items=n, timing=Timing(DEVICE, rounds=1), unit="samples",
        config=config, n=n, input_shape=[1, *shape], top_grid=list(model.top_shape),
        bottom_grid=list(model.bottom_shape), crop_rows=crop_rows,
    )  # fmt: skip
    codes_t, codes_b = outputs[-1]
    assert codes_t.shape == (n, *model.top_shape) and codes_b.shape == (n, *model.bottom_shape)
