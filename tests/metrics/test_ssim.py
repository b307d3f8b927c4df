"""SSIM plugin: agreement with scikit-image, input checks and update/compute/reset behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from skimage.metrics import structural_similarity

from bench_core.api import BenchError, MetricPlugin
from bench_plugins.metrics.ssim import SSIM, bench_metrics, ssim_per_item

# Options that make skimage compute what each preset computes.
SKIMAGE_KWARGS = {
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
    "skimage": {},
}


def skimage_ssim(pred: np.ndarray, target: np.ndarray, preset: str, data_range: float = 1.0) -> np.ndarray:
    """Per-item skimage SSIM of (N, C, *spatial) arrays, channels averaged via channel_axis."""
    kwargs = SKIMAGE_KWARGS[preset]
    return np.array(
        [
            structural_similarity(p, t, data_range=data_range, channel_axis=0, **kwargs)
            for p, t in zip(pred, target, strict=True)
        ]
    )


def noisy_pair(shape: tuple[int, ...], dtype: np.dtype, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image batch and a noisy copy of it, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    pred = np.clip(target + 0.2 * rng.standard_normal(shape), 0.0, 1.0)
    return pred.astype(dtype), target.astype(dtype)


def structured_pair(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Camera crops and smooth gradients (flat regions stress the variance terms), with noisy copies."""
    rng = np.random.default_rng(7)
    camera = skimage.data.camera().astype(np.float64) / 255.0
    crops = [camera[100:201, 50:187], camera[300:401, 311:448]]
    yy, xx = np.mgrid[0:101, 0:137]
    crops += [xx / 136.0, 0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 13.0)]
    target = np.stack(crops)[:, None]
    pred = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0.0, 1.0)
    pred[2] = target[2] ** 2  # a deterministic, noise-free distortion of the gradient
    return pred.astype(dtype), target.astype(dtype)


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", ["gaussian", "skimage"])
@pytest.mark.parametrize(
    ("shape", "dims"),
    [((2, 1, 255, 129), 2), ((2, 3, 64, 48), 2), ((2, 1, 33, 41, 25), 3), ((1, 2, 33, 41, 25), 3)],
)
def test_matches_skimage_random(shape, dims, preset, dtype):
    pred, target = noisy_pair(shape, dtype, seed=sum(shape))
    ours = ssim_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, preset, dims)
    assert ours.shape == (shape[0],)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(pred, target, preset), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_skimage_preset_matches_on_smallest_image(dtype):
    pred, target = noisy_pair((3, 1, 7, 9), dtype, seed=1)
    ours = ssim_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, "skimage")
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(pred, target, "skimage"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", ["gaussian", "skimage"])
def test_matches_skimage_structured(preset, dtype):
    pred, target = structured_pair(dtype)
    ours = ssim_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, preset)
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(pred, target, preset), rtol=0, atol=1e-5)


def test_float32_inputs_give_float64_exact_values():
    # Flat regions (a step edge, a near-white plane) are where float32 statistics drift by
    # ~1e-5: E[x^2] - E[x]^2 cancels and the rounding is the same at every pixel. The float64
    # statistics must match skimage's float64 computation on the same float32 values.
    rng = np.random.default_rng(11)
    xx = np.mgrid[0:48, 0:48][1]
    flat = np.stack([np.where(xx < 24, 1.0, 0.0), np.full((48, 48), 0.999)])[:, None]
    target = np.concatenate([structured_pair(np.float64)[1][:, :, :48, :48], flat]).astype(np.float32)
    pred = np.clip(target + 1e-3 * rng.standard_normal(target.shape), 0.0, 1.0).astype(np.float32)
    for preset in ("gaussian", "skimage"):
        ours = ssim_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, preset)
        exact = skimage_ssim(pred.astype(np.float64), target.astype(np.float64), preset)
        np.testing.assert_allclose(ours.numpy(), exact, rtol=0, atol=1e-12)


def test_data_range_scales_constants():
    pred, target = noisy_pair((2, 1, 40, 40), np.float64, seed=3)
    ours = ssim_per_item(torch.from_numpy(pred * 255), torch.from_numpy(target * 255), 255.0)
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(pred * 255, target * 255, "gaussian", 255.0), atol=1e-10)
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(pred, target, "gaussian"), atol=1e-10)


def test_gaussian_preset_refuses_image_smaller_than_window():
    pred, target = noisy_pair((1, 1, 7, 9), np.float64, seed=2)
    with pytest.raises(BenchError, match=r"at least 11x11.*got spatial shape 7x9"):
        ssim_per_item(torch.from_numpy(pred), torch.from_numpy(target), 1.0, "gaussian")
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        skimage_ssim(pred, target, "gaussian")


def test_identical_images_give_one():
    x = torch.rand(3, 2, 32, 32)
    for preset in ("gaussian", "skimage"):
        assert torch.allclose(ssim_per_item(x, x.clone(), 1.0, preset), torch.ones(3, dtype=torch.float64))


def test_metric_plugin_contract():
    assert bench_metrics() == [SSIM]
    metric = SSIM()
    assert isinstance(metric, MetricPlugin)
    assert SSIM.dims == frozenset({2, 3}) and SSIM.kind == "paired" and SSIM.higher_is_better
    settings = metric.settings()
    assert settings["preset"] == "gaussian" and settings["win_size"] == 11 and settings["sigma"] == 1.5
    assert settings["covariance"] == "population" and (settings["K1"], settings["K2"]) == (0.01, 0.03)
    skim = SSIM(preset="skimage", dims=3).settings()
    assert skim["window"] == "uniform" and skim["win_size"] == 7 and skim["covariance"] == "sample"
    assert skim["dims"] == 3 and skim["std"].startswith("population")


@pytest.mark.parametrize(
    "kwargs", [{"preset": "nope"}, {"dims": 4}, {"data_range": 0}, {"data_range": None}, {"out_of_range": "warn"}]
)
def test_bad_options_raise(kwargs):
    with pytest.raises(BenchError, match="ssim"):
        SSIM(**kwargs)


def test_update_compute_reset():
    metric = SSIM(preset="skimage")
    pred, target = (torch.from_numpy(a) for a in noisy_pair((6, 1, 24, 20), np.float32, seed=4))
    with pytest.raises(BenchError, match="no samples"):
        metric.compute()
    first = metric.update(pred[:2], target[:2])
    second = metric.update(pred[2:], target[2:])
    split = metric.compute()
    metric.reset()
    with pytest.raises(BenchError, match="no samples"):
        metric.compute()
    whole = metric.update(pred, target)
    joined = metric.compute()
    assert torch.equal(torch.cat([first, second]), whole)
    assert split.per_item == joined.per_item == whole.tolist()
    assert split.n == joined.n == 6
    values = np.array(joined.per_item)
    assert joined.value == pytest.approx(values.mean(), abs=1e-12)
    assert joined.std == pytest.approx(values.std(ddof=0), abs=1e-12)
    assert joined.settings == metric.settings()


def test_out_of_range_error_names_metric_values_and_range():
    x = torch.rand(2, 1, 16, 16)
    bad = x.clone()
    bad[0, 0, 0, 0] = 1.5
    bad[1, 0, 3, 3] = -0.25
    with pytest.raises(BenchError, match=r"ssim: pred values lie in \[-0.25, 1.5\].*\[0, 1\]"):
        SSIM().update(bad, x)


def test_out_of_range_clamp_counts_values():
    x = torch.rand(2, 1, 16, 16)
    bad = x.clone()
    bad[0, 0, 0, 0] = 1.5
    bad[1, 0, 3, 3] = -0.25
    bad[1, 0, 4, 4] = 1.0 + 1e-7  # within tolerance: accepted, not counted
    metric = SSIM(out_of_range="clamp")
    values = metric.update(bad, x)
    assert torch.equal(values, ssim_per_item(bad.clamp(0, 1), x))
    metric.update(x, bad)
    assert metric.compute().counters == {"clamped_values": 4}
    assert "clamped_values" not in metric.compute().settings
    metric.reset()
    metric.update(x, x)
    assert metric.compute().counters == {"clamped_values": 0}


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("policy", ["error", "clamp"])
def test_non_finite_input_raises(bad_value, policy):
    x = torch.rand(2, 1, 16, 16)
    bad = x.clone()
    bad[1, 0, 5, 5] = bad_value
    with pytest.raises(BenchError, match="ssim: target contains NaN or Inf"):
        SSIM(out_of_range=policy).update(x, bad)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(BenchError, match=r"pred \(2, 1, 16, 16\), target \(2, 1, 16, 17\)"):
        SSIM().update(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 17))


def test_wrong_rank_for_dims_raises():
    with pytest.raises(BenchError, match=r"\(N, C, D, H, W\)"):
        SSIM(dims=3).update(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))


def test_3d_metric_path():
    pred, target = noisy_pair((2, 1, 33, 41, 25), np.float32, seed=5)
    metric = SSIM(dims=3, preset="skimage")
    values = metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_allclose(values.numpy(), skimage_ssim(pred, target, "skimage"), atol=1e-5)
    assert metric.compute().n == 2
