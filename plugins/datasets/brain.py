"""Brain phantom on real MNI152 anatomy, rendered as T1- or FLAIR-weighted MR in 2D or 3D.

The synthetic default behind the ``oasis`` (T1 axial slices) and ``biobank-flair`` (3D FLAIR
volumes) dataset plugins, following datasets.md §3 and §4 items 3-4. It is written from that
description only (no code of 3d_very_deep_vae or other GPL sources). Recipe:

1. Anatomy (:func:`load_atlas`): the ICBM152 2009a symmetric template that the nilearn wheel
   ships offline (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
   197x233x189 at 1 mm): skull-stripped T1, grey- and white-matter probability maps, and the
   brain mask nilearn's ``load_mni152_brain_mask`` derives (T1 above 0.2 of its maximum). CSF is
   the rest of the mask, ``clip(mask - GM - WM, 0, 1)``. The files are read with nibabel from
   the installed package, without importing nilearn (a 3 s import) and without any download.
2. Per-subject randomisation (:func:`subject_params`): a random affine (rotation up to 10
   degrees, scale +-8%, shift), a smooth elastic displacement field (a few mm), 1 to
   ``max_lesions`` white-matter lesions centred in periventricular deep white matter, and a
   +-5% jitter of each tissue intensity.
3. Contrasts: T1 is the template's own T1 intensity (real contrast, deep nuclei included) with
   lesions at the T1-hypointense level; FLAIR mixes the tissue fractions with the datasets.md §3
   values (CSF nulled, GM brighter than WM, lesions brightest), so partial volumes stay partial.
4. Acquisition, drawn per image (:func:`render`): partial-volume Gaussian blur, a smooth
   multiplicative bias field ``exp(b * field)``, Rician noise ``sqrt((x + n1)^2 + n2^2)``, then
   skull-stripping (zero outside the warped brain mask).

Output grids are sampled from the maps at warped coordinates (trilinear, no per-voxel Python
loop), so one subject can be rendered as a 3D volume or as single 2D axial slices; grids coarser
than 2.5 mm per voxel sample a 2 mm area-averaged copy of the maps, so thin cortex does not alias.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bench_core.api import DataError

BACKGROUND, CSF, GM, WM, LESION = range(5)
TISSUES = ("background", "csf", "gm", "wm", "lesion")
"""Names of the phantom's tissue labels, indexed by label value."""

CONTRASTS = {
    # BrainWeb T1 values (CSF 48, GM 106, WM 154) and T1-hypointense lesions (~70), divided by WM.
    # Only the lesion level is used: T1 images take the template's own intensities.
    "t1": np.array([0.0, 48.0, 106.0, 154.0, 70.0], dtype=np.float32) / 154.0,
    # FLAIR: CSF nulled (~15), GM 120 > WM 85, lesions ~200 (datasets.md §3), divided by lesion level.
    "flair": np.array([0.0, 15.0, 120.0, 85.0, 200.0], dtype=np.float32) / 200.0,
}
"""Nominal signal per tissue label for each contrast (arbitrary units, at most 1)."""

OASIS_SEG_LEVELS = np.array([0, 85, 170, 255, 255], dtype=np.uint8)
"""Maps phantom labels to the grey levels of OASIS masks (background, CSF, GM, WM); lesions count as WM."""

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
"""The ICBM152 2009a files of the nilearn wheel (``nilearn/datasets/data``) the phantom is built from."""

MASK_THRESHOLD = 0.2
"""Brain mask = template T1 above this fraction of its maximum, as ``nilearn.datasets.load_mni152_brain_mask``."""

FRAME_CENTRE_MM = np.array([0.0, -18.0, 18.0])
"""MNI coordinates of the output frame's centre: the centre of SPM's 181x217x181 mm bounding box."""

FRAME_HALF_MM = 108.5
"""Millimetres per frame unit: half the box's 217 mm anterior-posterior extent (its largest axis)."""

# Map channels of an Atlas, all scaled 0..255 (1 mm maps stay uint8: 35 MB instead of 140 MB).
_T1, _GM, _WM, _MASK = range(4)
_COARSE_FROM_MM = 2.5  # output voxels at least this large sample the 2 mm maps
# Periventricular deep white matter where lesion centres are drawn (MNI mm, WM probability).
_LESION_BOX_MM = np.array([[-32.0, -45.0, -2.0], [32.0, 30.0, 38.0]])
_LESION_SITE_WM = 0.9
_LESION_RADIUS = (0.015, 0.05)  # frame units: 1.6-5.4 mm half-axes
_WARP_STD = 0.03  # frame units: ~3 mm displacement per axis
_WARP_SIGMA = 0.12
_WARP_MODES = 16
_BIAS_SIGMA = 0.5
_BIAS_MODES = 6
# Points per chunk when evaluating Fourier fields: bounds the (points x modes) temporaries to a few MB.
_CHUNK = 1 << 15


@dataclass(frozen=True, eq=False)
class Atlas:
    """The MNI152 maps at one voxel size, with what is needed to sample them at MNI coordinates."""

    maps: np.ndarray  # (4, X, Y, Z): T1, GM, WM, brain mask, each scaled 0..255
    mm_to_voxel: np.ndarray  # (4, 4) inverse affine
    voxel_mm: float
    wm_t1: float  # mean template T1 (0..1) where WM probability > 0.9: the lesion level's reference
    lesion_sites: np.ndarray  # (M, 3) MNI mm of periventricular deep white-matter voxels


def mni_data_dir() -> Path:
    """The folder of the MNI152 files inside the installed nilearn package, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "brain phantoms (embedded oasis and biobank-flair data) need the MNI152 maps shipped in the "
            "nilearn wheel, but nilearn is not installed: pip install nilearn"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in MNI_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder}: the installed nilearn lacks the MNI152 files {', '.join(missing)}; "
            "reinstall it from a wheel (pip install --force-reinstall nilearn)"
        )
    return folder


@functools.lru_cache(maxsize=2)
def load_atlas(voxel_mm: int = 1) -> Atlas:
    """The MNI152 T1, GM, WM and brain-mask maps at ``voxel_mm`` 1 (native) or 2 (2x2x2 area average).

    Read once per process (about 0.2 s) and cached.
    """
    if voxel_mm not in (1, 2):
        raise ValueError(f"voxel_mm must be 1 or 2, got {voxel_mm}")
    if voxel_mm == 2:
        fine = load_atlas(1)
        pad = [(0, 0)] + [(0, n % 2) for n in fine.maps.shape[1:]]
        maps = np.pad(fine.maps, pad).astype(np.float32)
        for axis in (1, 2, 3):  # pairwise means along each axis: a 2x2x2 block mean
            lower = maps[(slice(None),) * axis + (slice(0, None, 2),)]
            upper = maps[(slice(None),) * axis + (slice(1, None, 2),)]
            maps = (lower + upper) * np.float32(0.5)
        # Coarse voxel i covers fine voxels 2i and 2i + 1, centred on fine index 2i + 0.5.
        to_coarse = np.diag([0.5, 0.5, 0.5, 1.0])
        to_coarse[:3, 3] = -0.25
        return Atlas(maps, to_coarse @ fine.mm_to_voxel, 2.0, fine.wm_t1, fine.lesion_sites)
    folder = mni_data_dir()
    images = {key: nib.load(folder / name) for key, name in MNI_FILES.items()}
    arrays = {key: np.asarray(image.dataobj) for key, image in images.items()}
    affine = images["t1"].affine
    t1 = arrays["t1"].astype(np.float32) / float(arrays["t1"].max())
    mask = (t1 > MASK_THRESHOLD).astype(np.uint8) * 255
    maps = np.stack([arrays["t1"], arrays["gm"], arrays["wm"], mask]).astype(np.uint8)
    wm_prob = arrays["wm"].astype(np.float32) / 255.0
    deep = wm_prob > _LESION_SITE_WM
    ijk = np.argwhere(deep)
    mm = nib.affines.apply_affine(affine, ijk)
    inside_box = ((mm >= _LESION_BOX_MM[0]) & (mm <= _LESION_BOX_MM[1])).all(axis=1)
    return Atlas(maps, np.linalg.inv(affine), 1.0, float(t1[deep].mean()), mm[inside_box])


@dataclass(frozen=True, eq=False)
class FourierField:
    """A smooth random field in 3D as a sum of random cosine modes, evaluable at arbitrary points.

    Frequencies drawn from a Gaussian give the covariance of Gaussian-smoothed white noise, but
    the field needs no grid: the same subject is evaluated on 3D grids and on 2D slice planes.
    """

    freq: np.ndarray  # (K, 3) cycles per unit
    phase: np.ndarray  # (C, K) one row per component
    std: float  # standard deviation of each component

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate at ``points`` of shape ``(N, 3)``; returns ``(C, N)`` float32."""
        weight = np.float32(self.std * np.sqrt(2.0 / len(self.freq)))
        freq = (2.0 * np.pi * self.freq.T).astype(np.float32)
        # cos(a + p) = cos a cos p - sin a sin p: one (N, K) pair of trig arrays serves every component.
        cos_p, sin_p = np.cos(self.phase).astype(np.float32), np.sin(self.phase).astype(np.float32)
        out = np.empty((len(self.phase), len(points)), dtype=np.float32)
        for start in range(0, len(points), _CHUNK):
            # einsum rather than BLAS: a threaded BLAS call this small is dominated by thread
            # start-up on busy CPUs.
            angle = np.einsum("nd,dk->nk", points[start : start + _CHUNK].astype(np.float32), freq)
            terms = np.einsum("ck,nk->cn", cos_p, np.cos(angle)) - np.einsum("ck,nk->cn", sin_p, np.sin(angle))
            out[:, start : start + _CHUNK] = terms * weight
        return out


def random_field(rng: np.random.Generator, components: int, modes: int, sigma: float, std: float) -> FourierField:
    """A :class:`FourierField` with the spectrum of white noise smoothed by a Gaussian of width ``sigma``."""
    f_std = 1.0 / (2.0 * np.sqrt(2.0) * np.pi * sigma)
    return FourierField(
        freq=rng.normal(0.0, f_std, (modes, 3)), phase=rng.uniform(0.0, 2.0 * np.pi, (components, modes)), std=std
    )


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """An ellipsoid given by its centre, the matrix mapping offsets to unit-sphere coordinates and its reach."""

    centre: np.ndarray  # (3,)
    to_unit: np.ndarray  # (3, 3): diag(1 / radii) @ rotation.T
    reach: float  # largest half-axis: no point farther than this along any axis is inside

    @classmethod
    def make(cls, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray | None = None) -> Ellipsoid:
        """Ellipsoid with half-axes ``radii`` along the columns of ``rotation`` (identity by default)."""
        rotation = np.eye(3) if rotation is None else rotation
        radii = np.asarray(radii, float)
        return cls(np.asarray(centre, float), np.diag(1.0 / radii) @ rotation.T, float(radii.max()))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of ``points`` ``(N, 3)`` inside the ellipsoid.

        A bounding-box test first, so a small lesion costs a few comparisons per point instead
        of a 3x3 transform.
        """
        near = np.flatnonzero((np.abs(points - self.centre) <= self.reach).all(axis=1))
        unit = np.einsum("nd,jd->nj", points[near] - self.centre, self.to_unit)
        mask = np.zeros(len(points), dtype=bool)
        mask[near] = np.einsum("nj,nj->n", unit, unit) <= 1.0
        return mask


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation by ``angles`` (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True, eq=False)
class BrainParams:
    """Pose, warp, lesions and contrast of one synthetic subject (see :func:`subject_params`)."""

    pose: np.ndarray  # (3, 3) inverse affine: output coordinates -> anatomy coordinates (frame units)
    shift: np.ndarray  # (3,) translation of the anatomy in output coordinates
    warp: FourierField
    lesions: tuple[Ellipsoid, ...]  # in anatomy coordinates (frame units)
    contrast_jitter: np.ndarray  # (len(TISSUES),) multiplicative


def mm_to_frame(mm: np.ndarray) -> np.ndarray:
    """MNI millimetres to frame units (see :data:`FRAME_CENTRE_MM`, :data:`FRAME_HALF_MM`)."""
    return (np.asarray(mm, float) - FRAME_CENTRE_MM) / FRAME_HALF_MM


def subject_params(rng: np.random.Generator, max_lesions: int = 12) -> BrainParams:
    """Draw a new subject: affine pose, elastic warp, 1 to ``max_lesions`` WM lesions, contrast jitter."""
    sites = load_atlas(1).lesion_sites
    n_lesions = int(rng.integers(1, max_lesions + 1)) if max_lesions > 0 else 0
    centres = mm_to_frame(sites[rng.choice(len(sites), size=n_lesions)])
    lesions = tuple(
        Ellipsoid.make(centre, rng.uniform(*_LESION_RADIUS, 3), rotation_matrix(rng.uniform(0.0, np.pi, 3)))
        for centre in centres
    )
    scale = rng.uniform(0.92, 1.08, 3)
    rotation = rotation_matrix(np.deg2rad(rng.uniform(-10.0, 10.0, 3)))
    jitter = rng.uniform(0.95, 1.05, len(TISSUES)).astype(np.float32)
    jitter[BACKGROUND] = 1.0
    return BrainParams(
        pose=np.linalg.inv(rotation @ np.diag(scale)),
        shift=rng.normal(0.0, 0.02, 3),
        warp=random_field(rng, 3, _WARP_MODES, _WARP_SIGMA, _WARP_STD),
        lesions=lesions,
        contrast_jitter=jitter,
    )


def anatomy_points(params: BrainParams, points: np.ndarray) -> np.ndarray:
    """Map output-frame points ``(N, 3)`` to anatomy coordinates (frame units): inverse affine plus warp."""
    return np.einsum("nd,jd->nj", points - params.shift, params.pose) + params.warp(points).T


def tissue_fractions(params: BrainParams, points: np.ndarray, voxel_mm: int = 1) -> dict[str, np.ndarray]:
    """Tissue fractions of the warped MNI anatomy at output-frame ``points`` ``(N, 3)``.

    Returns float32 arrays of length N: ``t1`` (template T1, 0..1), ``mask`` (brain mask,
    interpolated), ``csf``, ``gm``, ``wm`` and ``lesion`` (fractions summing to at most 1;
    lesions take the white-matter fraction of the points inside a lesion).
    """
    atlas = load_atlas(voxel_mm)
    anatomy = anatomy_points(params, points)
    mm = FRAME_CENTRE_MM + FRAME_HALF_MM * anatomy
    voxels = (mm @ atlas.mm_to_voxel[:3, :3].T + atlas.mm_to_voxel[:3, 3]).T
    t1, gm, wm, mask = (
        ndimage.map_coordinates(m, voxels, output=np.float32, order=1, mode="constant", cval=0.0) / np.float32(255.0)
        for m in atlas.maps
    )
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    # Interpolated probabilities can exceed 1 together by rounding; CSF is whatever the mask leaves.
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    inside = np.zeros(len(points), dtype=bool)
    if params.lesions:
        # Lesions sit in deep white matter: one box test keeps the few points near any of them.
        low = np.min([lesion.centre - lesion.reach for lesion in params.lesions], axis=0)
        high = np.max([lesion.centre + lesion.reach for lesion in params.lesions], axis=0)
        near = np.flatnonzero(((anatomy >= low) & (anatomy <= high)).all(axis=1))
        hit = np.zeros(len(near), dtype=bool)
        for lesion in params.lesions:
            hit |= lesion.contains(anatomy[near])
        inside[near] = hit
    lesion = np.where(inside, wm, np.float32(0.0))
    return {"t1": t1, "mask": mask, "csf": csf, "gm": gm, "wm": wm - lesion, "lesion": lesion}


def tissue_labels(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """Hard labels (uint8, :data:`TISSUES`): background outside the mask, else the largest tissue fraction."""
    stacked = np.stack([fractions[name] for name in TISSUES[1:]])
    labels = (np.argmax(stacked, axis=0) + 1).astype(np.uint8)
    labels[fractions["mask"] < 0.5] = BACKGROUND
    return labels


def grid_points(shape: tuple[int, ...], slice_z: float | None = None) -> np.ndarray:
    """Output-frame coordinates of the voxel centres of a 3D grid or of a 2D axial slice, ``(N, 3)``.

    3D ``shape`` is ``(X, Y, Z)`` in NIfTI voxel order (left to right, posterior to anterior,
    inferior to superior, as the MNI template). 2D ``shape`` is ``(rows, columns)`` of an axial
    slice at height ``slice_z`` displayed radiologically: anterior at the top, the subject's
    right on the left. One unit is half the largest axis (:data:`FRAME_HALF_MM` millimetres).
    """
    unit = max(shape) / 2.0
    axes = [(np.arange(n) + 0.5 - n / 2.0) / unit for n in shape]
    if len(shape) == 3:
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)
    if len(shape) != 2 or slice_z is None:
        raise ValueError(f"expected a 3D shape, or a 2D shape with slice_z; got {shape} and {slice_z}")
    rows, cols = np.meshgrid(*axes, indexing="ij")
    return np.stack([-cols.ravel(), -rows.ravel(), np.full(rows.size, slice_z)], axis=1)


def _signal(params: BrainParams, fractions: dict[str, np.ndarray], contrast: str) -> np.ndarray:
    jitter = params.contrast_jitter
    tissues = [fractions[name] for name in TISSUES[1:]]
    if contrast == "flair":
        values = CONTRASTS["flair"] * jitter
        return sum(v * f for v, f in zip(values[1:], tissues, strict=True))
    # T1: the template's own intensity, jittered per tissue; the lesion fraction takes the lesion level.
    total = np.maximum(sum(tissues), np.float32(1e-6))
    gain = sum(j * f for j, f in zip(jitter[1:], tissues, strict=True)) / total
    lesion_level = CONTRASTS["t1"][LESION] / CONTRASTS["t1"][WM] * load_atlas(1).wm_t1 * jitter[LESION]
    lesion = fractions["lesion"] / total
    return fractions["t1"] * gain * (1.0 - lesion) + lesion_level * lesion


def render(
    params: BrainParams,
    rng: np.random.Generator,
    shape: tuple[int, ...],
    contrast: str,
    slice_z: float | None = None,
    noise: tuple[float, float] = (0.015, 0.04),
) -> dict[str, np.ndarray]:
    """Render a subject on a 3D grid or a 2D axial slice (see :func:`grid_points`).

    Returns ``{"image": float32 array of shape, "labels": uint8 array of shape}``. The image is
    the contrast's signal with partial-volume blur (sigma 0.6 px), a bias field of strength
    0.15-0.25, Rician noise of std ``noise`` (range, relative to the brightest tissue), and zero
    outside the warped brain mask (skull-stripped). ``rng`` draws the acquisition effects only.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; valid: {', '.join(CONTRASTS)}")
    points = grid_points(shape, slice_z)
    voxel_mm = 2 if 2.0 * FRAME_HALF_MM / max(shape) >= _COARSE_FROM_MM else 1
    fractions = tissue_fractions(params, points, voxel_mm)
    labels = tissue_labels(fractions).reshape(shape)
    signal = _signal(params, fractions, contrast).reshape(shape).astype(np.float32)
    signal = ndimage.gaussian_filter(signal, 0.6, mode="constant")
    bias_field = random_field(rng, 1, _BIAS_MODES, _BIAS_SIGMA, 1.0)(points)[0].reshape(shape)
    signal = signal * np.exp(rng.uniform(0.15, 0.25) * bias_field)
    sigma = rng.uniform(*noise)
    n1, n2 = rng.normal(0.0, sigma, (2, *shape))
    image = np.sqrt((signal + n1) ** 2 + n2**2) * (labels > BACKGROUND)
    return {"image": image.astype(np.float32), "labels": labels}
