"""MS-SSIM plugin: agreement with an independent numpy reference and skimage, size errors, conformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from bench_core.api import BenchError, MetricPlugin
from bench_core.testing import check_metric_plugin
from bench_plugins.metrics.msssim import MSSSIM, bench_metrics, msssim_per_item

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_msssim(x: np.ndarray, y: np.ndarray, scales: int = 5, data_range: float = 1.0) -> float:
    """Straightforward MS-SSIM of one single-channel 2D or 3D array pair (Wang's msssim.m, valid windows)."""
    g1 = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    g1 /= g1.sum()
    window = g1
    for _ in range(x.ndim - 1):
        window = np.multiply.outer(window, g1)

    def filt(a):
        return ndimage.correlate(a, window, mode="constant")[tuple(slice(5, s - 5) for s in a.shape)]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    weights = WEIGHTS[:scales] / WEIGHTS[:scales].sum()
    out = 1.0
    for j in range(scales):
        mx, my = filt(x), filt(y)
        vx, vy, cov = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        cs = (2 * cov + c2) / (vx + vy + c2)
        if j == scales - 1:
            lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            out *= max((lum * cs).mean(), 0.0) ** weights[j]
        else:
            out *= max(cs.mean(), 0.0) ** weights[j]
            x, y = box_down(x), box_down(y)
    return out


def box_down(a: np.ndarray) -> np.ndarray:
    """Mean of 2x2(x2) blocks with the odd last row repeated, written out without filters."""
    a = np.pad(a, [(0, s % 2) for s in a.shape], mode="edge")
    view = a.reshape([v for s in a.shape for v in (s // 2, 2)])
    return view.mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def test_box_down_is_matlab_symmetric_imfilter_then_subsample():
    # msssim.m: imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end); MATLAB puts the
    # centre of an even kernel at its first tap, so output(i) averages x(i) and x(i + 1) (origin=-1 here).
    a = np.random.default_rng(0).random((7, 10))
    ref = ndimage.correlate(a, np.ones((2, 2)) / 4, mode="reflect", origin=-1)[::2, ::2]
    np.testing.assert_allclose(ref, box_down(a), atol=1e-15)


def pair(shape, seed, noise=0.1):
    rng = np.random.default_rng(seed)
    coarse = ndimage.zoom(rng.random(tuple(s // 8 + 2 for s in shape)), 8, order=1)
    target = coarse[tuple(slice(0, s) for s in shape)]
    pred = np.clip(target + noise * rng.standard_normal(shape), 0, 1)
    return pred, target


@pytest.mark.parametrize(("shape", "scales"), [((161, 161), 5), ((176, 190), 5), ((97, 83), 4), ((45, 41, 43), 3)])
def test_matches_independent_reference(shape, scales):
    pred, target = pair(shape, seed=sum(shape))
    ours = msssim_per_item(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], 1.0, scales,
                           len(shape))  # fmt: skip
    assert abs(float(ours[0]) - reference_msssim(pred, target, scales)) < 1e-5


def test_one_scale_is_skimage_gaussian_ssim():
    pred, target = pair((64, 48), seed=3)
    ours = float(msssim_per_item(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], 1.0, 1)[0])
    ref = structural_similarity(pred, target, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)  # fmt: skip
    assert abs(ours - ref) < 1e-5


def test_channels_batch_and_identity():
    pred, target = zip(*(pair((170, 165), seed=s, noise=0.05 * (s + 1)) for s in range(4)), strict=True)
    p = torch.from_numpy(np.stack(pred)).view(2, 2, 170, 165).float()
    t = torch.from_numpy(np.stack(target)).view(2, 2, 170, 165).float()
    values = msssim_per_item(p, t)
    expected = [np.mean([reference_msssim(pred[2 * i + c], target[2 * i + c]) for c in range(2)]) for i in range(2)]
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-5)
    assert torch.allclose(msssim_per_item(t, t), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_anticorrelated_clamps_to_zero_not_nan():
    _, target = pair((161, 161), seed=5)
    value = msssim_per_item(torch.from_numpy(1 - target)[None, None], torch.from_numpy(target)[None, None])
    assert torch.isfinite(value).all() and 0 <= float(value[0]) < 0.5


def test_too_small_names_minimum_and_fitting_scales():
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(BenchError, match=r"needs at least 161x161 for 5 scales with an 11x11 window, got 64x64; "
                       r"pass scales=3 \(needs 41x41\)"):  # fmt: skip
        MSSSIM().update(x, x)
    with pytest.raises(BenchError, match=r"needs at least 21x21x21 for 2 scales with an 11x11x11 window"):
        MSSSIM(dims=3, scales=2).update(torch.rand(1, 1, 16, 20, 20), torch.rand(1, 1, 16, 20, 20))
    with pytest.raises(BenchError, match="scales must be an integer from 1 to 5"):
        MSSSIM(scales=6)


def test_metric_object_and_settings():
    pred, target = pair((170, 170), seed=1)
    p, t = torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None]
    metric = MSSSIM(scales=3)
    metric.update(torch.cat([p, t]), torch.cat([t, t]))
    result = metric.compute()
    assert result.n == 2 and result.per_item[1] == pytest.approx(1.0)
    assert result.settings["weights"] == pytest.approx(list(WEIGHTS[:3] / WEIGHTS[:3].sum()))
    assert isinstance(metric, MetricPlugin)
    assert bench_metrics() == [MSSSIM]


@pytest.mark.parametrize(("dims", "scales"), [(2, 2), (3, 1)])
def test_conformance(dims, scales):
    # The kit's items are 32x32 and 16^3: 2 scales and 1 scale are what fits there.
    check_metric_plugin(MSSSIM, dims=dims, scales=scales)
