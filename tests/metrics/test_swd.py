"""SWD plugin: invariants, exact 1D Wasserstein, streaming, reservoir and conformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from bench_core.api import BenchError
from bench_core.testing import check_metric_plugin
from bench_plugins.metrics.swd import SWD, bench_metrics, laplacian_pyramid, wasserstein_1d


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth(n: int, seed: int, size: int = 32, dims: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, *[size // 4] * dims), generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=(size,) * dims, mode=mode, align_corners=False)


def swd(pred, target, **options):
    metric = SWD(dims=pred.dim() - 2, **options)
    metric.update(pred, target)
    return metric.compute()


def test_wasserstein_1d_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 40)), rng.standard_normal((3, 25)) + 0.3
    ours = wasserstein_1d(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(
        ours.numpy(), [wasserstein_distance(x, y) for x, y in zip(a, b, strict=True)], atol=1e-12
    )


def test_pyramid_levels_and_reconstruction():
    x = torch.rand(2, 1, 64, 48, dtype=torch.float64)
    levels = laplacian_pyramid(x, 2, 16)
    assert [tuple(lv.shape[2:]) for lv in levels] == [(64, 48), (32, 24)]
    assert abs(float(levels[0].mean())) < 0.05  # band-pass


def test_identical_sets_give_zero_and_noise_increases_it():
    x = smooth(6, seed=1, size=64)
    assert swd(x, x).value == 0.0
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    values = [swd((x + s * noise).clamp(0, 1), x).value for s in (0.02, 0.05, 0.1, 0.2)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    # Descriptors are standardised per side: a global affine change of intensity is invisible.
    assert swd(0.5 * x + 0.25, x).value < 1e-4 * values[0]  # float32 rounding only


def test_streaming_equals_one_batch_and_counts_may_differ():
    real, fake = smooth(7, seed=3), smooth(5, seed=4)
    one = swd(fake, real)
    metric = SWD()
    metric.update(fake[:2], real[:4])
    metric.update(fake[2:], real[4:])
    assert metric.compute().value == pytest.approx(one.value, rel=1e-12)
    assert one.settings["n_real"] == 7 and one.n == 5


def test_max_items_reservoir_and_seed():
    real, fake = smooth(9, seed=5), smooth(9, seed=6)
    capped = swd(fake, real, max_items=4)
    assert capped.settings["items_kept"] == [4, 4]
    assert swd(fake, real, seed=1).value != swd(fake, real, seed=2).value


def test_input_checks():
    with pytest.raises(BenchError, match="smaller than the patch"):
        SWD().update(torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6))
    metric = SWD()
    metric.update(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(BenchError, match="earlier items"):
        metric.update(torch.rand(2, 1, 20, 16), torch.rand(2, 1, 20, 16))


def test_volumes():
    x, y = smooth(3, seed=7, size=20, dims=3), smooth(3, seed=8, size=20, dims=3)
    result = swd(x, y, patches_per_item=16)
    assert result.value > 0 and swd(x, x, patches_per_item=16).value == 0.0


def test_registration():
    assert bench_metrics() == [SWD]


@pytest.mark.parametrize("dims", [2, 3])
def test_conformance(dims):
    check_metric_plugin(SWD, dims=dims)
