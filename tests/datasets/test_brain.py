"""The procedural brain phantom behind ``oasis`` and ``biobank-flair``: anatomy, contrasts, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench_plugins.datasets import brain

GRID = (40, 48, 40)


def _still(params: brain.BrainParams) -> brain.BrainParams:
    """The subject without pose or warp, so anatomy coordinates equal frame coordinates."""
    still_warp = replace(params.warp, std=0.0)
    return replace(params, pose=np.eye(3), shift=np.zeros(3), warp=still_warp)


def _with_lesion(params: brain.BrainParams, centre: tuple[float, float, float], radius: float) -> brain.BrainParams:
    return replace(params, lesions=(brain.Ellipsoid.make(np.array(centre), np.full(3, radius)),))


def _tissue_means(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {k: float(image[labels == k].mean()) for k in range(1, len(brain.TISSUES)) if (labels == k).any()}


def test_grid_points() -> None:
    points = brain.grid_points((4, 6, 2))
    assert points.shape == (48, 3)
    # One unit is half the largest axis (3 voxels); voxel centres are symmetric about 0.
    assert np.allclose(points.reshape(4, 6, 2, 3)[:, 0, 0, 0], np.array([-1.5, -0.5, 0.5, 1.5]) / 3)
    plane = brain.grid_points((2, 4), slice_z=0.3)
    assert plane.shape == (8, 3) and np.all(plane[:, 2] == 0.3)
    assert plane[0, 1] > 0 > plane[-1, 1]  # anterior at the top row
    with pytest.raises(ValueError, match="slice_z"):
        brain.grid_points((2, 4))


def test_labels_anatomy_and_lesions_replace_white_matter_only() -> None:
    params = _still(brain.subject_params(np.random.default_rng(0)))
    ventricle = params.ventricles[0].centre
    centre_probe = np.array([[0.0, 0.0, 0.0], ventricle, [0.0, 0.0, 0.9], [0.0, 0.9, 0.0]])
    labels = brain.brain_labels(replace(params, lesions=()), centre_probe)
    assert labels.tolist() == [brain.WM, brain.CSF, brain.BACKGROUND, brain.BACKGROUND]
    lesioned = _with_lesion(params, (0.0, 0.0, 0.0), 0.05)
    assert brain.brain_labels(lesioned, centre_probe[:2]).tolist() == [brain.LESION, brain.CSF]
    in_ventricle = _with_lesion(params, tuple(ventricle), 0.03)
    assert brain.brain_labels(in_ventricle, centre_probe[1:2]).tolist() == [brain.CSF]
    # A whole volume has every tissue, with a cortex band of GM outside the WM core.
    volume = brain.brain_labels(lesioned, brain.grid_points(GRID)).reshape(GRID)
    assert set(np.unique(volume)) == set(range(len(brain.TISSUES)))
    assert np.mean(volume == brain.GM) > 0.05 and np.mean(volume == brain.WM) > 0.05


def test_flair_contrast_csf_dark_gm_over_wm_lesions_brightest() -> None:
    rng = np.random.default_rng(1)
    params = _with_lesion(brain.subject_params(rng), (0.0, 0.0, 0.0), 0.08)
    out = brain.render(params, rng, GRID, "flair")
    image, labels = out["image"], out["labels"]
    assert image.dtype == np.float32 and labels.shape == image.shape == GRID
    mean = _tissue_means(image, labels)
    assert mean[brain.CSF] < mean[brain.WM] < mean[brain.GM] < mean[brain.LESION]
    # Skull-stripped: exactly zero outside the brain, positive (Rician) inside.
    assert (image[labels == brain.BACKGROUND] == 0).all() and (image[labels > 0] >= 0).all()


def test_t1_contrast_on_an_axial_slice() -> None:
    rng = np.random.default_rng(2)
    params = _with_lesion(brain.subject_params(rng), (0.0, -0.3, 0.05), 0.08)
    out = brain.render(params, rng, (96, 96), "t1", slice_z=0.05)
    mean = _tissue_means(out["image"], out["labels"])
    assert out["image"].shape == (96, 96)
    assert mean[brain.CSF] < mean[brain.GM] < mean[brain.WM]
    assert mean[brain.LESION] < mean[brain.WM]  # T1-hypointense lesions
    assert 0.0 < out["image"].max() < 1.5


def test_subjects_differ_and_rendering_is_seeded() -> None:
    first = brain.subject_params(np.random.default_rng(3))
    again = brain.render(brain.subject_params(np.random.default_rng(3)), np.random.default_rng(9), GRID, "flair")
    once = brain.render(first, np.random.default_rng(9), GRID, "flair")
    assert np.array_equal(once["image"], again["image"])
    other = brain.render(brain.subject_params(np.random.default_rng(4)), np.random.default_rng(9), GRID, "flair")
    assert not np.array_equal(once["labels"], other["labels"])
    with pytest.raises(ValueError, match="unknown contrast"):
        brain.render(first, np.random.default_rng(0), GRID, "t2")


def test_oasis_mask_levels() -> None:
    labels = np.arange(len(brain.TISSUES), dtype=np.uint8)
    assert brain.OASIS_SEG_LEVELS[labels].tolist() == [0, 85, 170, 255, 255]
