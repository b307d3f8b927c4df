"""KID plugin: unbiased polynomial MMD against a direct numpy implementation, subsets, reservoir, conformance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench_core.testing import check_metric_plugin
from bench_plugins.metrics import inception, inception_weights, kid
from bench_plugins.metrics.kid import KID, bench_metrics

RANDOM = "random:0"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed term by term."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand((n, 1, 4, 4), generator=g), size=(24, 24), mode="bilinear")


def feats(x: torch.Tensor) -> np.ndarray:
    return inception.features(x.expand(-1, 3, -1, -1), inception_weights.resolve_weights(RANDOM), 64).astype(np.float64)


def test_whole_set_matches_direct_formula():
    real, fake = images(8, seed=1), images(8, seed=2)
    metric = KID(weights=RANDOM, feature_dims=64, subset_size=50, n_subsets=2)
    metric.update(fake, real)
    result = metric.compute()
    # One subset of all 8 is a permutation of the whole set, and MMD^2 ignores order.
    expected = direct_mmd2(feats(real), feats(fake))
    assert result.value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert result.std == pytest.approx(0.0, abs=1e-12)
    assert result.settings["subset_size_used"] == 8 and "high variance" in result.settings["warning"]
    assert result.components == {}


@pytest.mark.parametrize("gram_bytes", [kid._GRAM_BYTES, 0])
def test_subsets_follow_documented_sampling(monkeypatch, gram_bytes):
    monkeypatch.setattr(kid, "_GRAM_BYTES", gram_bytes)  # 0 forces the per-subset kernels
    real, fake = images(9, seed=3), images(7, seed=4)
    metric = KID(weights=RANDOM, feature_dims=64, subset_size=4, n_subsets=5, seed=3)
    for r, f in zip(real.split(3), fake.split(3), strict=True):  # 3 + 3 + 3 real, 3 + 3 + 1 generated
        metric.update(f, r)
    fr, ff = feats(real), feats(fake)
    rng = np.random.default_rng(3)
    values = []
    for _ in range(5):
        r, f = rng.choice(9, 4, replace=False), rng.choice(7, 4, replace=False)
        values.append(direct_mmd2(fr[r], ff[f]))
    result = metric.compute()
    assert result.value == pytest.approx(np.mean(values), rel=1e-9, abs=1e-12)
    assert result.std == pytest.approx(np.std(values), rel=1e-6, abs=1e-12)
    assert (result.n, result.settings["n_real"], result.settings["n_fake"]) == (7, 9, 7)


def test_max_samples_bounds_memory_and_is_batching_invariant():
    real, fake = images(10, seed=5), images(10, seed=6)
    one = KID(weights=RANDOM, feature_dims=64, subset_size=3, n_subsets=4, max_samples=4)
    one.update(fake, real)
    split = KID(weights=RANDOM, feature_dims=64, subset_size=3, n_subsets=4, max_samples=4)
    for r, f in zip(real.split(3), fake.split(3), strict=True):
        split.update(f, r)
    a, b = one.compute(), split.compute()
    assert a.value == b.value and a.settings["features_kept"] == [4, 4]
    assert len(one._real[0].rows()) == 4


def test_volumes_give_one_kid_per_plane_and_the_std_of_the_plane_mean():
    g = torch.Generator().manual_seed(8)
    real, fake = torch.rand(6, 1, 6, 8, 10, generator=g), 0.7 * torch.rand(5, 1, 6, 8, 10, generator=g)
    options = {"weights": RANDOM, "feature_dims": 64, "subset_size": 3, "n_subsets": 4, "seed": 2}
    metric = KID(dims=3, **options)
    metric.update(fake[:2], real[:3])
    metric.update(fake[2:], real[3:])
    result = metric.compute()
    cuts = {  # the documented planes, written out independently of the plugin
        "axial": lambda v: v[:, :, 3], "coronal": lambda v: v[:, :, :, 4], "sagittal": lambda v: v[:, :, :, :, 5],
    }  # fmt: skip
    assert list(result.components) == list(cuts)
    rng = np.random.default_rng(2)
    subsets = [(rng.choice(6, 3, replace=False), rng.choice(5, 3, replace=False)) for _ in range(4)]
    per_plane = []
    for plane, cut in cuts.items():
        fr, ff = feats(cut(real)), feats(cut(fake))
        values = [direct_mmd2(fr[r], ff[f]) for r, f in subsets]
        per_plane.append(values)
        part = result.components[plane]
        assert part.value == pytest.approx(np.mean(values), rel=1e-9, abs=1e-12), plane
        assert part.std == pytest.approx(np.std(values), rel=1e-6, abs=1e-12), plane
        two_d = KID(**options)
        two_d.update(cut(fake), cut(real))
        assert part.value == pytest.approx(two_d.compute().value, rel=1e-12, abs=1e-15), plane
        assert part.settings["plane"].startswith(plane) and "this plane" in part.settings["std"]
    plane_mean = np.mean(per_plane, axis=0)
    assert result.value == pytest.approx(np.mean([c.value for c in result.components.values()]), rel=1e-9)
    assert result.value == pytest.approx(plane_mean.mean(), rel=1e-9, abs=1e-12)
    assert result.std == pytest.approx(plane_mean.std(), rel=1e-6, abs=1e-12)
    assert "plane-mean" in result.settings["std"] and result.n == 5


def test_unavailable_without_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metric = KID()
    metric.update(images(2, seed=1), images(2, seed=2))
    result = metric.compute()
    assert math.isnan(result.value) and result.settings["status"] == "unavailable"
    assert str(tmp_path) in result.settings["reason"]


def test_registration():
    assert bench_metrics() == [KID]


@pytest.mark.parametrize("dims", [2, 3])
def test_conformance(dims):
    check_metric_plugin(KID, dims=dims, weights=RANDOM, feature_dims=64, subset_size=4, n_subsets=10)
