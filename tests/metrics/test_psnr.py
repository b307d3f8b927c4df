"""PSNR plugin: agreement with scikit-image, the cap, input checks and update/compute/reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from bench_core.api import BenchError, MetricPlugin
from bench_plugins.metrics.psnr import PSNR, bench_metrics, psnr_per_item


def noisy_pair(shape: tuple[int, ...], dtype: np.dtype, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image batch and a noisy copy of it, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    pred = np.clip(target + 0.1 * rng.standard_normal(shape), 0.0, 1.0)
    return pred.astype(dtype), target.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "dims"),
    [((3, 1, 7, 9), 2), ((3, 1, 255, 129), 2), ((3, 3, 64, 48), 2), ((2, 1, 33, 41, 25), 3)],
)
def test_matches_skimage(shape, dims, dtype):
    pred, target = noisy_pair(shape, dtype, seed=sum(shape))
    ours = psnr_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, dims=dims)
    # skimage on the whole (C, *spatial) item: the MSE spans all channels and voxels.
    ref = [peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(pred, target, strict=True)]
    assert ours.shape == (shape[0],) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5)


def test_constant_offset_gives_20_db():
    target = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 0.9
    pred = target + 0.1  # MSE 0.01 on data_range 1: 10 * log10(1 / 0.01) = 20 dB
    assert psnr_per_item(pred, target).tolist() == pytest.approx([20.0, 20.0], abs=1e-9)
    # data_range 255 with offset 25.5 is the same ratio.
    assert psnr_per_item(pred * 255, target * 255, 255.0).tolist() == pytest.approx([20.0, 20.0], abs=1e-9)


def test_identical_images_hit_the_cap():
    x = torch.rand(2, 1, 8, 8)
    assert psnr_per_item(x, x.clone()).tolist() == [100.0, 100.0]
    metric = PSNR(max_db=50.0)
    assert metric.update(x, x.clone()).tolist() == [50.0, 50.0]
    result = metric.compute()
    assert (result.value, result.std, result.settings["max_db"]) == (50.0, 0.0, 50.0)


def test_metric_plugin_contract():
    assert bench_metrics() == [PSNR]
    metric = PSNR(dims=3)
    assert isinstance(metric, MetricPlugin)
    assert PSNR.dims == frozenset({2, 3}) and PSNR.kind == "paired" and PSNR.higher_is_better
    settings = metric.settings()
    assert settings["max_db"] == 100.0 and settings["data_range"] == 1.0 and settings["dims"] == 3
    assert settings["out_of_range"] == "error" and "clamped_values" not in settings  # a counter, not a setting


@pytest.mark.parametrize(
    "kwargs", [{"dims": 1}, {"data_range": -1.0}, {"max_db": float("inf")}, {"out_of_range": "ignore"}]
)
def test_bad_options_raise(kwargs):
    with pytest.raises(BenchError, match="psnr"):
        PSNR(**kwargs)


def test_update_compute_reset():
    metric = PSNR()
    pred, target = (torch.from_numpy(a) for a in noisy_pair((5, 2, 12, 10), np.float32, seed=4))
    with pytest.raises(BenchError, match="no samples"):
        metric.compute()
    first = metric.update(pred[:3], target[:3])
    second = metric.update(pred[3:], target[3:])
    split = metric.compute()
    metric.reset()
    with pytest.raises(BenchError, match="no samples"):
        metric.compute()
    whole = metric.update(pred, target)
    joined = metric.compute()
    assert torch.equal(torch.cat([first, second]), whole)
    assert split.per_item == joined.per_item == whole.tolist()
    assert split.n == joined.n == 5
    values = np.array(joined.per_item)
    assert joined.value == pytest.approx(values.mean(), abs=1e-12)
    assert joined.std == pytest.approx(values.std(ddof=0), abs=1e-12)


def test_out_of_range_error_and_clamp():
    x = torch.rand(2, 1, 8, 8) * 0.5 + 0.25
    bad = x.clone()
    bad[0, 0, 0, 0] = 1.2
    with pytest.raises(BenchError, match=r"psnr: target values lie in \[.*, 1.2\], outside .*\[0, 1\]"):
        PSNR().update(x, bad)
    metric = PSNR(out_of_range="clamp")
    values = metric.update(x, bad)
    assert torch.equal(values, psnr_per_item(x, bad.clamp(0, 1)))
    result = metric.compute()
    assert result.counters == {"clamped_values": 1} and "clamped_values" not in result.settings


@pytest.mark.parametrize("bad_value", [float("nan"), float("-inf")])
def test_non_finite_input_raises(bad_value):
    x = torch.rand(2, 1, 8, 8)
    bad = x.clone()
    bad[0, 0, 1, 1] = bad_value
    with pytest.raises(BenchError, match="psnr: pred contains NaN or Inf"):
        PSNR(out_of_range="clamp").update(bad, x)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(BenchError, match=r"pred \(2, 1, 8, 8\), target \(1, 1, 8, 8\)"):
        PSNR().update(torch.rand(2, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_integer_input_raises():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(BenchError, match="float tensors"):
        PSNR().update(x, x)
