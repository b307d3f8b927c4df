"""The MNI152 brain phantom behind ``oasis`` and ``biobank-flair``: real anatomy, contrasts, lesions, determinism.

References are independent of the phantom's own sampling: nilearn's loaders (with the network
blocked, so they prove the files are bundled) and nilearn's resampling onto the same grids.
"""

from __future__ import annotations

import re
import socket
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bench_core.api import DataError
from bench_plugins.datasets import brain

GRID = (48, 56, 48)
SLICE = (128, 128)
SLICE_Z = 0.1


@pytest.fixture(scope="module")
def nilearn_maps() -> dict[str, nib.Nifti1Image]:
    """nilearn's own MNI152 images, loaded with every socket refused: they must come from the wheel."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by the test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        from nilearn import datasets

        return {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
            "mask": datasets.load_mni152_brain_mask(resolution=1),
        }


def _resampled(image: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, ...], how: str) -> np.ndarray:
    from nilearn.image import resample_img

    out = resample_img(
        image, target_affine=affine, target_shape=shape, interpolation=how, force_resample=True, copy_header=True
    )
    return np.asarray(out.dataobj, dtype=np.float32)


def _grid_affine() -> np.ndarray:
    """Voxel -> MNI mm of ``brain.grid_points(GRID)`` (the 3D frame): isotropic, RAS, centred on the frame."""
    voxel = 2.0 * brain.FRAME_HALF_MM / max(GRID)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = brain.FRAME_CENTRE_MM - voxel * (np.array(GRID) - 1) / 2.0
    return affine


def _slice_affine(slice_z: float = SLICE_Z) -> np.ndarray:
    """(row, column, 0) -> MNI mm of the radiological axial slice at ``slice_z``: rows run -y, columns -x."""
    pixel = 2.0 * brain.FRAME_HALF_MM / max(SLICE)
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 0], affine[2, 2], affine[3, 3] = -pixel, -pixel, 1.0, 1.0
    top_left = brain.FRAME_CENTRE_MM + brain.FRAME_HALF_MM * np.array([1.0, 1.0, 0.0]) - pixel / 2.0
    affine[:3, 3] = [top_left[0], top_left[1], brain.FRAME_CENTRE_MM[2] + brain.FRAME_HALF_MM * slice_z]
    return affine


def _still(params: brain.BrainParams, lesions: tuple[brain.Ellipsoid, ...] = ()) -> brain.BrainParams:
    """The subject without pose, warp or lesions: anatomy coordinates equal frame coordinates."""
    return replace(params, pose=np.eye(3), shift=np.zeros(3), warp=replace(params.warp, std=0.0), lesions=lesions)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_bundled_files_equal_nilearns_loaders_offline(nilearn_maps: dict[str, nib.Nifti1Image]) -> None:
    atlas = brain.load_atlas(1)
    maps = {"t1": atlas.maps[0], "gm": atlas.maps[1], "wm": atlas.maps[2], "mask": atlas.maps[3]}
    for name, image in nilearn_maps.items():
        np.testing.assert_allclose(maps[name].astype(np.float32), 255.0 * np.asarray(image.dataobj), atol=1e-3)
        np.testing.assert_array_equal(np.linalg.inv(atlas.mm_to_voxel), image.affine)
    # Deep white matter around the ventricles, inside the brain.
    assert len(atlas.lesion_sites) > 10_000 and (np.abs(atlas.lesion_sites[:, 0]) <= 32).all()


def test_unwarped_anatomy_is_the_mni_template(nilearn_maps: dict[str, nib.Nifti1Image]) -> None:
    params = _still(brain.subject_params(np.random.default_rng(0)))
    labels = brain.render(params, np.random.default_rng(0), GRID, "flair")["labels"]
    mask = _resampled(nilearn_maps["mask"], _grid_affine(), GRID, "nearest") > 0.5
    assert _dice(labels > 0, mask) > 0.97
    gm = _resampled(nilearn_maps["gm"], _grid_affine(), GRID, "linear")
    ours = brain.tissue_fractions(params, brain.grid_points(GRID), voxel_mm=1)["gm"].reshape(GRID)
    assert np.corrcoef(ours.ravel(), gm.ravel())[0, 1] > 0.97
    # The 2D axial plane: radiological orientation and height match the template too.
    flat = brain.render(params, np.random.default_rng(0), SLICE, "t1", slice_z=SLICE_Z)["labels"]
    plane = _resampled(nilearn_maps["mask"], _slice_affine(), (*SLICE, 1), "nearest")[..., 0] > 0.5
    assert _dice(flat > 0, plane) > 0.97
    # Intensities too, and a flip of either in-plane axis would show (the outline alone is near symmetric).
    ours_t1 = brain.tissue_fractions(params, brain.grid_points(SLICE, SLICE_Z))["t1"].reshape(SLICE)
    t1 = _resampled(nilearn_maps["t1"], _slice_affine(), (*SLICE, 1), "linear")[..., 0]
    both = plane & np.flipud(plane)  # correlate inside the brain, where the anatomy is
    assert np.corrcoef(ours_t1[both], t1[both])[0, 1] > 0.95
    assert np.corrcoef(ours_t1[both], np.flipud(t1)[both])[0, 1] < 0.5


def test_warps_move_the_anatomy_plausibly(nilearn_maps: dict[str, nib.Nifti1Image]) -> None:
    mask = _resampled(nilearn_maps["mask"], _grid_affine(), GRID, "nearest") > 0.5
    brains = [
        brain.render(brain.subject_params(np.random.default_rng(s)), np.random.default_rng(0), GRID, "flair")
        for s in (1, 2)
    ]
    for out in brains:
        assert 0.75 < _dice(out["labels"] > 0, mask) < 0.99
    assert _dice(brains[0]["labels"] > 0, brains[1]["labels"] > 0) < 0.99


def test_t1_slice_contrast_on_mni_tissue_masks(nilearn_maps: dict[str, nib.Nifti1Image]) -> None:
    # z = 18 mm: through the lateral ventricles, so CSF has enough pixels to measure.
    params = _still(brain.subject_params(np.random.default_rng(2)))
    image = brain.render(params, np.random.default_rng(2), SLICE, "t1", slice_z=0.0)["image"]
    affine, shape = _slice_affine(0.0), (*SLICE, 1)
    prob = {k: _resampled(nilearn_maps[k], affine, shape, "linear")[..., 0] for k in ("gm", "wm")}
    inside = _resampled(nilearn_maps["mask"], affine, shape, "nearest")[..., 0] > 0.5
    wm = image[prob["wm"] > 0.9].mean()
    gm = image[prob["gm"] > 0.9].mean()
    csf_pixels = ndimage.binary_erosion(inside, iterations=2) & (prob["gm"] + prob["wm"] < 0.2)
    assert csf_pixels.sum() > 20
    csf = image[csf_pixels].mean()
    background = image[~ndimage.binary_dilation(inside, iterations=3)]
    assert wm > 1.15 * gm and gm > 1.15 * csf and csf > 0.0 and (background == 0).all()
    assert image.dtype == np.float32 and 0.5 < wm < 1.2


def test_flair_lesions_are_present_in_white_matter_and_bright() -> None:
    rng = np.random.default_rng(1)
    params = brain.subject_params(rng)
    assert 1 <= len(params.lesions) <= 12
    # A large lesion in the centrum semiovale, so the test does not hinge on partial volumes.
    lesion = brain.Ellipsoid.make(brain.mm_to_frame(np.array([-24.0, -10.0, 28.0])), np.full(3, 0.05))
    params = replace(params, lesions=(*params.lesions, lesion))
    out = brain.render(params, rng, GRID, "flair")
    image, labels = out["image"], out["labels"]
    assert image.dtype == np.float32 and labels.shape == image.shape == GRID
    lesions = labels == brain.LESION
    assert lesions.sum() > 20
    ring = ndimage.binary_dilation(lesions, iterations=2) & ~lesions & (labels == brain.WM)
    assert image[lesions].mean() > 1.3 * image[ring].mean()
    mean = {k: float(image[labels == k].mean()) for k in range(1, len(brain.TISSUES))}
    assert mean[brain.CSF] < mean[brain.WM] < mean[brain.GM] < mean[brain.LESION]
    # Skull-stripped: exactly zero outside the brain, positive (Rician) inside.
    assert (image[labels == brain.BACKGROUND] == 0).all() and (image[labels > 0] > 0).all()


def test_lesions_take_only_white_matter() -> None:
    params = brain.subject_params(np.random.default_rng(3))
    points = brain.grid_points(GRID)
    with_lesions = brain.tissue_fractions(params, points, voxel_mm=2)
    without = brain.tissue_fractions(replace(params, lesions=()), points, voxel_mm=2)
    assert with_lesions["lesion"].max() > 0.9 and without["lesion"].max() == 0.0
    np.testing.assert_allclose(with_lesions["wm"] + with_lesions["lesion"], without["wm"], atol=1e-6)
    for name in ("csf", "gm", "mask", "t1"):
        np.testing.assert_array_equal(with_lesions[name], without[name])


def test_rendering_is_seeded() -> None:
    once = brain.render(brain.subject_params(np.random.default_rng(3)), np.random.default_rng(9), GRID, "flair")
    again = brain.render(brain.subject_params(np.random.default_rng(3)), np.random.default_rng(9), GRID, "flair")
    assert once["image"].tobytes() == again["image"].tobytes()
    other = brain.render(brain.subject_params(np.random.default_rng(4)), np.random.default_rng(9), GRID, "flair")
    assert not np.array_equal(once["labels"], other["labels"])
    with pytest.raises(ValueError, match=re.escape("unknown contrast 't2'; valid: t1, flair")):
        brain.render(brain.subject_params(np.random.default_rng(0)), np.random.default_rng(0), GRID, "t2")


def test_grid_points() -> None:
    points = brain.grid_points((4, 6, 2))
    assert points.shape == (48, 3)
    # One unit is half the largest axis (3 voxels); voxel centres are symmetric about 0.
    assert np.allclose(points.reshape(4, 6, 2, 3)[:, 0, 0, 0], np.array([-1.5, -0.5, 0.5, 1.5]) / 3)
    plane = brain.grid_points((2, 4), slice_z=0.3)
    assert plane.shape == (8, 3) and np.all(plane[:, 2] == 0.3)
    assert plane[0, 1] > 0 > plane[-1, 1]  # anterior at the top row
    assert plane[0, 0] > 0 > plane[3, 0]  # the subject's right (+x) on the left
    with pytest.raises(ValueError, match="slice_z"):
        brain.grid_points((2, 4))


def test_missing_nilearn_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brain.importlib.util, "find_spec", lambda name: None)
    message = (
        "brain phantoms (embedded oasis and biobank-flair data) need the MNI152 maps shipped in the "
        "nilearn wheel, but nilearn is not installed: pip install nilearn"
    )
    with pytest.raises(DataError, match=re.escape(message) + "$"):
        brain.mni_data_dir()


def test_oasis_mask_levels() -> None:
    labels = np.arange(len(brain.TISSUES), dtype=np.uint8)
    assert brain.OASIS_SEG_LEVELS[labels].tolist() == [0, 85, 170, 255, 255]
