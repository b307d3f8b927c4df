"""SSIM speed: batched torch presets against scikit-image's per-image loop on 64 gray 256x256 images.

With the project's default ``--benchmark-disable`` each benchmark runs once as a plain test
(and checks the values agree); ``pytest tests/benchmarks --benchmark-enable`` times them with
``bench_core.timing.benchmark_throughput`` (rounds after one warm-up; ``extra_info["images_per_s"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bench_core.timing import Timing, benchmark_throughput
from bench_plugins.metrics.ssim import ssim_per_item

N_IMAGES = 64
SIDE = 256

# Options that make skimage compute what each preset computes.
SKIMAGE_KWARGS = {
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
    "skimage": {},
}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """64x1x256x256 float32 targets in [0, 1] and noisy predictions."""
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(N_IMAGES, 1, SIDE, SIDE, generator=generator)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp_(0.0, 1.0)
    return pred, target


def skimage_loop(pred: torch.Tensor, target: torch.Tensor, preset: str) -> np.ndarray:
    """The reference: one structural_similarity call per image."""
    kwargs = SKIMAGE_KWARGS[preset]
    pairs = zip(pred[:, 0].numpy(), target[:, 0].numpy(), strict=True)
    return np.array([structural_similarity(p, t, data_range=1.0, **kwargs) for p, t in pairs])


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Minimum wall time of ``repeats`` calls: the least disturbed by other load on the machine.

    Kept beside ``benchmark_throughput`` on purpose: the comparison asserts an ordering of two
    times, and the minimum is more robust to a loaded CPU than the mean. All of it is CPU work.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _throughput(benchmark, images: tuple[torch.Tensor, torch.Tensor], implementation: str, preset: str):
    """Time one implementation over the ``N_IMAGES`` image pairs with the shared protocol; return its values."""
    values: list[torch.Tensor | np.ndarray] = []

    def compute() -> None:
        if implementation == "torch":
            values.append(ssim_per_item(*images, 1.0, preset))
        else:
            values.append(skimage_loop(*images, preset))

    benchmark_throughput(
        benchmark, compute, items=N_IMAGES, timing=Timing("cpu"), implementation=implementation, preset=preset,
        side=SIDE,
    )  # fmt: skip
    return values[-1]


@pytest.mark.benchmark(group="ssim-gaussian")
def test_torch_ssim_gaussian(benchmark, images):
    assert _throughput(benchmark, images, "torch", "gaussian").shape == (N_IMAGES,)


@pytest.mark.benchmark(group="ssim-gaussian")
def test_skimage_loop_gaussian(benchmark, images):
    values = _throughput(benchmark, images, "skimage loop", "gaussian")
    np.testing.assert_allclose(ssim_per_item(*images, 1.0, "gaussian").numpy(), values, atol=1e-5)


@pytest.mark.benchmark(group="ssim-skimage-preset")
def test_torch_ssim_skimage_preset(benchmark, images):
    assert _throughput(benchmark, images, "torch", "skimage").shape == (N_IMAGES,)


@pytest.mark.benchmark(group="ssim-skimage-preset")
def test_skimage_loop_skimage_preset(benchmark, images):
    values = _throughput(benchmark, images, "skimage loop", "skimage")
    np.testing.assert_allclose(ssim_per_item(*images, 1.0, "skimage").numpy(), values, atol=1e-5)


@pytest.mark.benchmark(group="ssim")
def test_batched_ssim_not_slower_than_skimage(benchmark, images):
    # Wall-clock assertions are meaningless in an ordinary (possibly loaded) test run.
    if benchmark.disabled:
        pytest.skip("speed comparison runs with --benchmark-enable")

    def compare() -> dict[str, float]:
        timings = {}
        threads = torch.get_num_threads()
        for preset in SKIMAGE_KWARGS:
            timings[f"skimage_{preset}_s"] = best_of(lambda p=preset: skimage_loop(*images, p))
            timings[f"torch_{preset}_{threads}threads_s"] = best_of(lambda p=preset: ssim_per_item(*images, 1.0, p))
            # skimage runs on one core; torch on one thread is the like-for-like comparison, and
            # unlike multi-threaded torch it does not collapse when other processes load the CPU.
            torch.set_num_threads(1)
            try:
                timings[f"torch_{preset}_1thread_s"] = best_of(lambda p=preset: ssim_per_item(*images, 1.0, p))
            finally:
                torch.set_num_threads(threads)
        return timings

    # One timed round through the fixture, so the comparison's numbers land in the report.
    timings = benchmark.pedantic(compare, rounds=1, iterations=1)
    benchmark.extra_info.update(timings)
    print(" ".join(f"{name}={seconds:.3f}" for name, seconds in timings.items()))
    for preset in SKIMAGE_KWARGS:
        torch_s, skimage_s = timings[f"torch_{preset}_1thread_s"], timings[f"skimage_{preset}_s"]
        assert torch_s <= skimage_s, f"{preset}: torch {torch_s:.3f}s slower than skimage loop {skimage_s:.3f}s"
