"""PRDC plugin and the chunked exact k-NN: against a brute-force numpy reference, bad inputs, planes, conformance."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from bench_core.api import BenchError, MetricPlugin
from bench_core.testing import check_metric_plugin
from bench_plugins.metrics import _knn, features, inception, inception_weights
from bench_plugins.metrics.fid import FID
from bench_plugins.metrics.kid import KID
from bench_plugins.metrics.prdc import PRDC, bench_metrics, f_score, prdc

RANDOM = "random:0"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every pairwise Euclidean distance, from the differences (float64)."""
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64)) ** 2).sum(-1))


def reference_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """Kynkäänniemi et al. (<=) and Naeem et al. (<) written out on the full distance matrices."""
    rr, ff, rf = distances(real, real), distances(fake, fake), distances(real, fake)
    radius = {k: np.sort(rr, axis=1)[:, k] for k in (k_pr, k_dc)}  # column 0 is the item itself
    fake_radius = np.sort(ff, axis=1)[:, k_pr]
    return {
        "precision": (rf <= radius[k_pr][:, None]).any(axis=0).mean(),
        "recall": (rf <= fake_radius[None, :]).any(axis=1).mean(),
        "density": (rf < radius[k_dc][:, None]).sum(axis=0).mean() / k_dc,
        "coverage": (rf.min(axis=1) < radius[k_dc]).mean(),
    }


def feature_sets(seed: int, n_real: int, n_fake: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n_real, dims)) * 2.0 + 5.0
    fake = rng.standard_normal((n_fake, dims)) @ (np.eye(dims) + 0.2 * rng.standard_normal((dims, dims))) + 5.3
    return real.astype(np.float32), fake.astype(np.float32)


@pytest.mark.parametrize(
    ("seed", "n_real", "n_fake", "dims", "chunk", "k_pr", "k_dc"),
    [
        (0, 120, 90, 16, 2048, 3, 5),  # one block
        (1, 120, 90, 16, 7, 3, 5),  # many blocks, a ragged last one, the diagonal split
        (2, 61, 200, 64, 32, 1, 2),
        (3, 300, 300, 2, 50, 3, 5),  # 2-d: many near-ties between distances
        (4, 40, 15, 128, 16, 4, 7),
    ],
)
def test_prdc_equals_brute_force_reference(seed, n_real, n_fake, dims, chunk, k_pr, k_dc):
    real, fake = feature_sets(seed, n_real, n_fake, dims)
    ours = prdc(real, fake, k_pr, k_dc, chunk_size=chunk)
    expected = reference_prdc(real, fake, k_pr, k_dc)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
        assert ours[key] == pytest.approx(float(np.mean(ours["per_item"][key])), abs=1e-12), key
    assert len(ours["per_item"]["precision"]) == n_fake and len(ours["per_item"]["coverage"]) == n_real


def test_duplicates_and_copies_follow_the_reference_ties():
    # Exact copies sit at distance 0 and duplicated real items have radius 0: only exact ties decide.
    real, fake = feature_sets(5, 80, 60, 32)
    real[10:20] = real[0]  # ten duplicates of one item: their k-NN radius is 0 for k < 10
    fake[:15] = real[:15]
    fake[15:20] = real[0] + 1e-3
    for chunk in (2048, 9):
        ours = prdc(real, fake, 3, 5, chunk_size=chunk)
        expected = reference_prdc(real, fake, 3, 5)
        for key, value in expected.items():
            assert ours[key] == pytest.approx(value, abs=1e-6), (chunk, key)


def test_identical_sets_score_like_the_reference_and_near_one():
    real, _ = feature_sets(6, 100, 1, 8)
    ours = prdc(real, real.copy(), 3, 5, chunk_size=13)
    assert ours["precision"] == ours["recall"] == ours["coverage"] == 1.0
    assert ours["density"] == pytest.approx(reference_prdc(real, real, 3, 5)["density"], abs=1e-12)


def test_k_nearest_and_nearest_match_brute_force():
    real, fake = feature_sets(7, 150, 70, 24)
    real[5] = real[6]  # a duplicate: distance exactly 0
    r, f = _knn.prepare(torch.from_numpy(real), torch.from_numpy(fake))
    rr = distances(real, real)
    for block in (11, 2048):
        (d2_2, _), (d2_5, idx5) = _knn.kth_neighbours(r, (2, 5), block)
        np.testing.assert_allclose(d2_2.sqrt().numpy(), np.sort(rr, axis=1)[:, 2], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d2_5.sqrt().numpy(), np.sort(rr, axis=1)[:, 5], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rr[np.arange(150), idx5.numpy()], np.sort(rr, axis=1)[:, 5], rtol=1e-12)
        near2, near_idx = _knn.nearest(f, r, block)
        rf = distances(fake, real)
        np.testing.assert_allclose(near2.sqrt().numpy(), rf.min(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(near_idx.numpy(), rf.argmin(axis=1))
    ((d2_1, _),) = _knn.kth_neighbours(r, (1,))
    assert float(d2_1[5]) == 0.0 and float(d2_1[6]) == 0.0  # exact, not Gram-identity rounding


def test_ties_beyond_the_kept_candidates():
    # A scaled simplex: every pair at one distance, so the k-th neighbour ties with all the others.
    real = np.eye(30, dtype=np.float32) * 3
    fake = np.concatenate([real[:10], np.eye(30, dtype=np.float32)[10:25] * 2.5])
    ((d2, _),) = _knn.kth_neighbours(*_knn.prepare(torch.from_numpy(real)), (5,), 7)
    assert torch.equal(d2, torch.full((30,), 18.0, dtype=torch.float64))
    ours, expected = prdc(real, fake, 3, 5, chunk_size=7), reference_prdc(real, fake, 3, 5)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(
    ("real_n", "fake_n", "k_pr", "k_dc", "match"),
    [
        (5, 10, 3, 5, "k_dc=5 needs more than 5 real items, got 5"),
        (3, 10, 3, 2, "k_pr=3 needs more than 3 real items, got 3"),
        (10, 2, 3, 5, "k_pr=3 needs more than 3 generated items, got 2"),
        (0, 10, 3, 5, "needs more than 3 real items, got 0"),
    ],
)
def test_sets_smaller_than_k_are_refused(real_n, fake_n, k_pr, k_dc, match):
    real, fake = feature_sets(8, max(real_n, 1), fake_n, 4)
    with pytest.raises(BenchError, match=match):
        prdc(real[:real_n], fake, k_pr, k_dc)


def test_the_plugin_reports_too_small_sets_unavailable():
    # A small test split (2 volumes in the quickstart's 3D data) must not fail the cell's other metrics.
    metric = PRDC(features="pyramid")
    metric.update(smooth(9, seed=1), smooth(4, seed=2))
    result = metric.compute()
    assert math.isnan(result.value) and result.settings["status"] == "unavailable"
    assert "k_dc=5 needs more than 5 real items, got 4" in result.settings["reason"]


def test_bad_features_are_refused():
    real, fake = feature_sets(9, 20, 20, 4)
    broken = real.copy()
    broken[3, 1] = np.nan
    with pytest.raises(BenchError, match="real features contain NaN or Inf"):
        prdc(broken, fake)
    broken[3, 1] = np.inf
    with pytest.raises(BenchError, match="NaN or Inf"):
        prdc(fake, broken)
    with pytest.raises(BenchError, match="differ in width"):
        prdc(real, fake[:, :3])
    with pytest.raises(BenchError, match="2D"):
        prdc(real[0], fake)


def test_bad_options():
    for options, match in [
        ({"k_pr": 0}, "k_pr must be a positive integer"),
        ({"k_dc": 2.5}, "k_dc must be a positive integer"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"features": "vgg"}, "features must be one of"),
        ({"features": "pyramid", "weights": RANDOM}, "apply to features='inception' only"),
    ]:
        with pytest.raises(BenchError, match=match):
            PRDC(**options)


def smooth(n: int, seed: int, size: int = 16, dims: int = 2, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, channels, *[4] * dims), generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=(size,) * dims, mode=mode, align_corners=False)


def test_plugin_equals_the_function_on_pyramid_features_and_streams():
    real, fake = smooth(14, seed=1), smooth(11, seed=2) * 0.9
    whole = PRDC(features="pyramid")
    whole.update(fake, real)
    result = whole.compute()
    space = features.PyramidSpace()
    expected = prdc(space(real, True), space(fake, False), 3, 5)
    for q in ("precision", "recall", "density", "coverage"):
        assert result.components[q].value == expected[q], q
        assert result.components[q].per_item == expected["per_item"][q], q
        assert result.components[q].settings["quantity"].startswith(q)
    assert result.value == f_score(expected["precision"], expected["recall"])
    streamed = PRDC(features="pyramid", chunk_size=4)
    for r, f in zip(real.split(5), fake.split(4), strict=True):
        streamed.update(f, r)
    again = streamed.compute()
    assert again.value == result.value and again.settings == result.settings  # chunk_size is not a setting
    settings = result.settings
    assert (settings["k_pr"], settings["k_dc"], settings["n_real"], settings["n_fake"]) == (3, 5, 14, 11)
    assert settings["extractor"].startswith("Laplacian pyramid descriptors") and result.n == 11
    json.dumps(settings)


def test_volumes_give_per_plane_values_and_their_mean():
    real, fake = smooth(9, seed=3, size=12, dims=3), smooth(8, seed=4, size=12, dims=3) ** 2
    metric = PRDC(dims=3, features="pyramid", k_pr=2, k_dc=3)
    metric.update(fake, real)
    result = metric.compute()
    cuts = {"axial": lambda v: v[:, :, 6], "coronal": lambda v: v[:, :, :, 6], "sagittal": lambda v: v[:, :, :, :, 6]}
    f_scores = []
    for plane, cut in cuts.items():
        two_d = PRDC(features="pyramid", k_pr=2, k_dc=3)
        two_d.update(cut(fake), cut(real))
        flat = two_d.compute()
        f_scores.append(flat.value)
        for q in ("precision", "recall", "density", "coverage"):
            part = result.components[f"{q}.{plane}"]
            assert part.value == flat.components[q].value, (q, plane)
            assert part.settings["plane"].startswith(plane) and "planes" not in part.settings
    for q in ("precision", "recall", "density", "coverage"):
        planes = [result.components[f"{q}.{p}"].value for p in cuts]
        assert result.components[q].value == pytest.approx(np.mean(planes), abs=1e-15)
        assert result.components[q].components == {}
    assert result.value == pytest.approx(np.mean(f_scores), abs=1e-15)
    assert len(result.components) == 16 and "mean of the per-plane F-scores" in result.settings["value"]


def test_inception_features_and_unavailable_without_weights(monkeypatch, tmp_path):
    real, fake = smooth(7, seed=5, channels=3), smooth(6, seed=6, channels=3)
    metric = PRDC(weights=RANDOM, feature_dims=64, k_pr=2, k_dc=3)
    metric.update(fake, real)
    result = metric.compute()
    source = inception_weights.resolve_weights(RANDOM)
    expected = prdc(inception.features(real, source, 64), inception.features(fake, source, 64), 2, 3)
    assert result.components["coverage"].value == expected["coverage"]
    assert result.settings["extractor"] == "pytorch-fid InceptionV3 first max pool 64"
    monkeypatch.delenv("BENCH_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    missing = PRDC()
    missing.update(fake, real)
    value = missing.compute()
    assert math.isnan(value.value) and value.settings["status"] == "unavailable"
    assert "FID Inception weights not found" in value.settings["reason"]


def test_fid_and_kid_take_the_pyramid_space():
    real, fake = smooth(70, seed=7), smooth(66, seed=8) * 0.8
    space = features.PyramidSpace()
    fr, ff = space(real, True).astype(np.float64), space(fake, False).astype(np.float64)
    fid = FID(features="pyramid")
    fid.update(fake, real)
    expected = calculate_frechet_distance(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))
    result = fid.compute()
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert result.settings["extractor"].startswith("Laplacian pyramid") and "weights" not in result.settings
    kid = KID(features="pyramid", subset_size=20, n_subsets=3)
    kid.update(fake, real)
    assert math.isfinite(kid.compute().value)
    with pytest.raises(BenchError, match="apply to features='inception' only"):
        FID(features="pyramid", feature_dims=64)


def test_pyramid_descriptors():
    space = features.PyramidSpace()
    constant = torch.full((2, 1, 20, 12), 0.25)
    desc = space(constant, True)
    assert desc.shape == (2, 3 * 64) and desc.dtype == np.float32
    np.testing.assert_allclose(desc[:, :128], 0.0, atol=1e-7)  # no band-pass energy
    np.testing.assert_allclose(desc[:, 128:], 0.25, atol=1e-7)  # low-pass: the mean intensity
    rgb = smooth(3, seed=9, size=31, channels=3)
    assert space(rgb, True).shape == (3, 3 * 3 * 64)
    for side in (8, 9, 15, 16, 33, 100):  # always three levels, whatever the size
        assert space(torch.rand(1, 1, side, side + 3), True).shape == (1, 192)
    assert features.PyramidSpace().channel_problem(5) is None
    with pytest.raises(BenchError, match="at least 8 pixels"):
        space(torch.rand(1, 1, 7, 30), True)
    x = smooth(2, seed=10)
    assert np.abs(space(x[:1], True) - space(x[1:], True)).sum() > 0
    np.testing.assert_array_equal(space(x, True)[1], space(x[1:].clone(), True)[0])  # per image, not per batch


def test_registration_and_conformance():
    assert bench_metrics() == [PRDC]
    assert isinstance(PRDC(features="pyramid"), MetricPlugin)
    check_metric_plugin(PRDC, dims=2, features="pyramid")
    check_metric_plugin(PRDC, dims=3, features="pyramid", k_pr=2, k_dc=2)
    metric = PRDC(features="pyramid")
    metric.update(smooth(8, seed=11), smooth(8, seed=12))
    pickle.loads(pickle.dumps(metric)).compute()
