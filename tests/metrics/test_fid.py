"""FID plugin: pytorch-fid's network and formula, streaming statistics, offline weights, unavailability."""

from __future__ import annotations

import math
import urllib.request

import numpy as np
import pytest
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from bench_core.api import BenchError, MetricPlugin
from bench_core.testing import check_metric_plugin
from bench_plugins.metrics import inception, inception_network, inception_weights, planes
from bench_plugins.metrics.fid import FID, GaussianStats, bench_metrics, frechet_distance

RANDOM = "random:0"


@pytest.fixture(autouse=True)
def one_thread_offline(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    yield
    torch.set_num_threads(before)


def images(n: int, seed: int, channels: int = 1, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, channels, 4, 4), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_network_is_pytorch_fid_inception_v3(monkeypatch):
    ours = inception_network.network(inception_weights.resolve_weights(RANDOM), 2048, torch.device("cpu"))
    key = inception_network.source_key(inception_weights.resolve_weights(RANDOM), 2048)
    state = inception_network._INCEPTIONS[key].state_dict()
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda *a, **k: state)
    reference = pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    x = images(2, seed=1, channels=3, size=40)
    with torch.no_grad():
        expected = reference(x)[0].flatten(1)
        got = ours(x)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_streamed_statistics_and_distance_match_pytorch_fid():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((300, 64)) * 2 + 5
    fake = rng.standard_normal((250, 64)) @ rng.standard_normal((64, 64)) * 0.3 + 4.5
    stats = [GaussianStats(64), GaussianStats(64)]
    for chunk in np.array_split(real, 3):
        stats[0].add(chunk.astype(np.float32))
    stats[1].add(fake.astype(np.float32))
    (mu_r, s_r), (mu_f, s_f) = stats[0].mean_cov(), stats[1].mean_cov()
    real32, fake32 = real.astype(np.float32).astype(np.float64), fake.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(s_r, np.cov(real32, rowvar=False), atol=1e-10)
    expected = calculate_frechet_distance(fake32.mean(0), np.cov(fake32, rowvar=False), real32.mean(0),
                                          np.cov(real32, rowvar=False))  # fmt: skip
    value, clipped = frechet_distance(mu_f, s_f, mu_r, s_r)
    assert value == pytest.approx(expected, rel=1e-6) and clipped == 0
    assert frechet_distance(mu_r, s_r, mu_r, s_r)[0] == pytest.approx(0.0, abs=1e-6)


def test_rank_deficient_covariances_give_a_finite_value_equal_to_pytorch_fid():
    # n < feature dim: both covariances are singular, where sqrtm needs its eps retry.
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((40, 96)), rng.standard_normal((30, 96)) * 1.3 + 0.2
    args = (fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    value, _ = frechet_distance(*args)
    assert np.isfinite(value)
    assert value == pytest.approx(calculate_frechet_distance(*args), rel=1e-5)


def test_end_to_end_equals_direct_features_and_streaming():
    real, fake = images(10, seed=2), images(9, seed=3)
    one = FID(weights=RANDOM, feature_dims=64)
    one.update(fake, real)
    streamed = FID(weights=RANDOM, feature_dims=64)
    for r, f in zip(real.split(4), fake.split(3), strict=True):
        streamed.update(f, r)
    net = inception_network.network(inception_weights.resolve_weights(RANDOM), 64, torch.device("cpu"))
    with torch.no_grad():
        fr = net(real.expand(-1, 3, -1, -1)).double().numpy()
        ff = net(fake.expand(-1, 3, -1, -1)).double().numpy()
    expected = calculate_frechet_distance(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))
    a, b = one.compute(), streamed.compute()
    assert a.value == pytest.approx(expected, rel=1e-6)
    assert b.value == pytest.approx(a.value, rel=1e-6)  # rank-deficient (n < dims): rounding is amplified
    assert (a.n, a.settings["n_real"], a.settings["n_fake"], a.settings["status"]) == (9, 10, 9, "ok")
    assert a.components == {} and "planes" not in a.settings
    assert "biased upward" in a.settings["warning"]
    same = FID(weights=RANDOM, feature_dims=64)
    same.update(real, real)
    assert abs(same.compute().value) < 1e-3 * a.value


CENTRE_SLICES = {  # the documented plane of each component, written out independently of the plugin
    "axial": lambda v: v[:, :, v.shape[2] // 2],
    "coronal": lambda v: v[:, :, :, v.shape[3] // 2],
    "sagittal": lambda v: v[:, :, :, :, v.shape[4] // 2],
}


def test_volumes_give_one_fid_per_plane_and_their_mean():
    g = torch.Generator().manual_seed(4)
    real, fake = torch.rand(7, 1, 6, 8, 10, generator=g), 0.8 * torch.rand(6, 1, 6, 8, 10, generator=g)
    assert [tuple(p.shape) for p in planes.to_inception_batches(real, 3, 1.0)] == [
        (7, 3, 8, 10), (7, 3, 6, 10), (7, 3, 6, 8)
    ]  # fmt: skip
    metric = FID(dims=3, weights=RANDOM, feature_dims=64)
    metric.update(fake, real)
    result = metric.compute()
    assert list(result.components) == ["axial", "coronal", "sagittal"]
    source = inception_weights.resolve_weights(RANDOM)
    for plane, cut in CENTRE_SLICES.items():
        # Features of the independently cut slices (content-keyed: a wrongly sliced plane would miss the cache).
        fr = inception.features(cut(real).expand(-1, 3, -1, -1), source, 64).astype(np.float64)
        ff = inception.features(cut(fake).expand(-1, 3, -1, -1), source, 64).astype(np.float64)
        expected = calculate_frechet_distance(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0),
                                              np.cov(fr, rowvar=False))  # fmt: skip
        part = result.components[plane]
        assert part.value == pytest.approx(expected, rel=1e-5), plane
        two_d = FID(weights=RANDOM, feature_dims=64)
        two_d.update(cut(fake), cut(real))
        assert part.value == two_d.compute().value, plane  # same features, same order: exactly the 2D FID
        assert part.n == 6 and part.std is None and part.settings["plane"].startswith(f"{plane}: centre slice")
        assert part.settings["dims"] == 3 and part.components == {}
    assert result.value == pytest.approx(np.mean([c.value for c in result.components.values()]), rel=1e-12)
    assert "mean of the per-plane values" in result.settings["planes"] and result.n == 6
    assert metric._real[0].n == 7 and metric._fake[2].n == 6


def test_unavailable_reports_reason_and_searched_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_FID_WEIGHTS", str(tmp_path / "env.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    metric = FID()
    metric.update(images(3, seed=1), images(4, seed=2))
    result = metric.compute()
    assert math.isnan(result.value) and result.n == 3
    assert result.settings["status"] == "unavailable"
    reason = result.settings["reason"]
    assert "FID Inception weights not found" in reason and "BENCH_FID_WEIGHTS" in reason
    assert str(tmp_path / "env.pth") in reason
    assert str(tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth") in reason
    assert result.settings["weights_sha256"] == "unavailable"


def test_weights_file_is_loaded_offline_and_fingerprinted(tmp_path, monkeypatch):
    source = inception_weights.resolve_weights("random:7")
    state = inception_network._fid_inception(source).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    monkeypatch.setenv("BENCH_FID_WEIGHTS", str(path))
    metric = FID(feature_dims=64)
    settings = metric.settings()
    assert settings["status"] == "ok" and len(settings["weights_sha256"]) == 16
    assert "NOT the pytorch-fid release" in settings["weights_check"]
    metric.update(images(3, seed=1), images(3, seed=2))
    reference = FID(weights="random:7", feature_dims=64)
    reference.update(images(3, seed=1), images(3, seed=2))
    assert metric.compute().value == pytest.approx(reference.compute().value, rel=1e-9)


def test_bad_weights(tmp_path):
    with pytest.raises(BenchError, match="do not exist"):
        FID(weights=str(tmp_path / "missing.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    settings = FID(weights=str(broken)).settings()
    assert settings["status"] == "unavailable" and "could not be loaded" in settings["reason"]


def test_feature_cache_runs_the_network_once_per_image(monkeypatch):
    x = images(3, seed=11, channels=3)
    source = inception_weights.resolve_weights(RANDOM)
    first = inception.features(x, source, 64)

    def fail(*args, **kwargs):
        raise AssertionError("network called for cached images")

    monkeypatch.setattr(inception, "network", fail)
    np.testing.assert_array_equal(inception.features(x.flip(0), source, 64), first[::-1])


def test_input_checks():
    metric = FID(weights=RANDOM, feature_dims=64)
    with pytest.raises(BenchError, match="2 channels"):
        metric.update(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(BenchError, match="outside the declared range"):
        metric.update(torch.rand(2, 1, 8, 8) + 1, torch.rand(2, 1, 8, 8))
    with pytest.raises(BenchError, match="feature_dims must be one of"):
        FID(feature_dims=100)
    with pytest.raises(BenchError, match="at least 2"):
        metric.compute()


def test_registration():
    assert bench_metrics() == [FID]
    assert isinstance(FID(weights=RANDOM, feature_dims=64), MetricPlugin)


@pytest.mark.parametrize("dims", [2, 3])
def test_conformance(dims):
    # Random weights and the 64-d block keep this offline and fast (sqrtm of 64x64, not 2048x2048).
    check_metric_plugin(FID, dims=dims, weights=RANDOM, feature_dims=64)
