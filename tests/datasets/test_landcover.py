"""The procedural land-cover generator behind ``sent``: physical sanity, NDVI encoding, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from bench_plugins.datasets import landcover as lc

SHAPE = (128, 128)


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    return [lc.landscape(np.random.default_rng(seed), SHAPE) for seed in range(4)]


def test_fractal_noise_is_standardised_and_seeded() -> None:
    noise = lc.fractal_noise(np.random.default_rng(0), (96, 64))
    assert noise.shape == (96, 64) and noise.dtype == np.float32
    assert abs(float(noise.mean())) < 1e-5 and float(noise.std()) == pytest.approx(1.0, abs=1e-4)
    assert np.array_equal(noise, lc.fractal_noise(np.random.default_rng(0), (96, 64)))
    # Multi-octave: smooth at pixel scale (neighbours strongly correlated), unlike white noise.
    assert np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1] > 0.9


def test_scene_arrays_and_ndvi_from_red_and_nir(scenes: list[dict[str, np.ndarray]]) -> None:
    for scene in scenes:
        refl, ndvi = scene["reflectance"], scene["ndvi"]
        assert scene["labels"].shape == SHAPE and refl.shape == (*SHAPE, 4) and ndvi.shape == SHAPE
        assert refl.dtype == ndvi.dtype == np.float32 and (refl > 0).all() and (refl <= 1).all()
        red, nir = refl[..., 2].astype(np.float64), refl[..., 3].astype(np.float64)
        np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), atol=1e-6)


def test_ndvi_per_class_is_physical(scenes: list[dict[str, np.ndarray]]) -> None:
    labels = np.concatenate([s["labels"].ravel() for s in scenes])
    ndvi = np.concatenate([s["ndvi"].ravel() for s in scenes])
    mean = {k: float(ndvi[labels == k].mean()) for k in range(len(lc.CLASSES)) if (labels == k).any()}
    assert set(mean) == set(range(len(lc.CLASSES)))  # every class occurs in these scenes
    assert mean[lc.WATER] < -0.1
    assert mean[lc.DENSE_VEGETATION] > 0.7
    assert mean[lc.DENSE_VEGETATION] > mean[lc.SPARSE_VEGETATION] > mean[lc.BARE_SOIL] > mean[lc.WATER]
    assert 0.0 < mean[lc.URBAN] < 0.3 and 0.0 < mean[lc.BARE_SOIL] < 0.3
    # Water looks dark and bluish in true colour; bare soil reddish.
    refl = np.concatenate([s["reflectance"].reshape(-1, 4) for s in scenes])
    water, soil = refl[labels == lc.WATER].mean(0), refl[labels == lc.BARE_SOIL].mean(0)
    assert water[0] > water[2] and soil[2] > soil[0] and water[:3].sum() < soil[:3].sum()


def test_ndvi_encoding_is_asymmetric_and_monotone() -> None:
    ndvi = np.linspace(-1.0, 1.0, 4001)
    code = lc.encode_ndvi(ndvi)
    assert code.dtype == np.uint8 and code[0] == 0 and code[-1] == 255
    assert (np.diff(code.astype(int)) >= 0).all()
    assert lc.encode_ndvi(np.array([0.0]))[0] == lc.NDVI_ZERO_CODE
    assert lc.encode_ndvi(np.array([-1e-4]))[0] == lc.NDVI_ZERO_CODE - 1
    assert np.unique(code[ndvi < 0]).size == 64 and np.unique(code[ndvi >= 0]).size == 192
    # Decoding recovers NDVI within one code step of the coarser (negative) half.
    assert np.abs(lc.decode_ndvi(code) - ndvi).max() <= 1.0 / 64


def test_sent_pair_layout(scenes: list[dict[str, np.ndarray]]) -> None:
    pair = lc.sent_pair(scenes[0])
    assert pair.shape == (128, 256, 3) and pair.dtype == np.uint8
    assert np.array_equal(pair[:, :128], lc.true_colour(scenes[0]["reflectance"]))
    right = pair[:, 128:]
    assert np.array_equal(right[..., 0], right[..., 1]) and np.array_equal(right[..., 0], right[..., 2])
    assert np.array_equal(right[..., 0], lc.encode_ndvi(scenes[0]["ndvi"]))


def test_true_colour_gain() -> None:
    refl = np.array([[[0.1, 0.2, 0.3, 0.5], [0.5, 0.5, 0.5, 0.5]]], dtype=np.float32)
    rgb = lc.true_colour(refl)
    assert rgb.tolist() == [[[191, 128, 64], [255, 255, 255]]]
