"""Procedural male-pelvis phantom: a seeded label map rendered as CT (HU) and T2-weighted MR.

This is the synthetic default behind the pelvis dataset plugins (datasets.md §3). The recipe:

1. Anatomy: a parametric axial label map (body with a subcutaneous fat ring, muscle, pelvic
   fat, two femoral heads with cortex and marrow, sacrum/coccyx, bladder, prostate, rectum
   wall with optional gas). Organs are cross-sections of 3D ellipsoids at ``slice_pos`` in
   ``[0, 1]`` (inferior to superior), so neighbouring slices of a patient change smoothly
   (2.5D) and a patient-disjoint split is meaningful.
2. Per-patient randomisation (:func:`patient_params`): per-structure scale jitter of about
   10%, a global shift and rotation, and a smooth random elastic displacement field
   (correlation length ~12 px, displacements peaking near 10 px at 256 px width) that also
   varies smoothly with ``slice_pos``.
3. Tissue lookup tables (:data:`CT_HU`, :data:`MR_T2`) with a small per-patient jitter.
4. Acquisition effects, drawn per slice: partial-volume blur, additive CT noise, and for MR a
   smooth multiplicative bias field and Rician noise.

Everything is vectorised numpy/scipy: a 256x256 CT+MR pair takes a few tens of milliseconds.
Image axes are (rows, columns) = (anterior->posterior, right->left) as displayed radiologically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

# Tissue labels of the phantom's label map (indices into the lookup tables below).
AIR, FAT, MUSCLE, CORTEX, MARROW, BLADDER, PROSTATE, RECTUM, GAS = range(9)
TISSUES = ("air", "fat", "muscle", "cortex", "marrow", "bladder", "prostate", "rectum", "gas")
"""Names of the phantom's tissue labels, indexed by label value."""

CT_HU = np.array([-1000.0, -100.0, 45.0, 1200.0, 250.0, 8.0, 40.0, 40.0, -900.0], dtype=np.float32)
"""Nominal CT attenuation per tissue label, in Hounsfield units."""

MR_T2 = np.array([0.0, 0.8, 0.25, 0.03, 0.6, 1.0, 0.5, 0.3, 0.0], dtype=np.float32)
"""Nominal T2-weighted MR signal per tissue label (arbitrary units, urine = 1)."""

SEG_LUT = np.array([0, 1, 1, 2, 2, 3, 5, 4, 4], dtype=np.uint8)
"""Maps phantom labels to the HipMRI classes 0 background, 1 body, 2 bone, 3 bladder, 4 rectum,
5 prostate (use as ``SEG_LUT[labels]``)."""

# The anatomy is laid out in normalised units: one unit is half the frame width, unless the
# frame is too short for the body's anterior-posterior extent (e.g. 128x256), in which case the
# unit shrinks so the body still fits.
_BODY_AP_EXTENT = 0.62
# Pixel sizes of the recipe refer to a 256 px wide frame, i.e. 128 px per unit.
_REFERENCE_UNIT_PX = 128.0
_WARP_SIGMA = 12.0 / _REFERENCE_UNIT_PX
# Per-component standard deviation; peaks of the displacement magnitude reach about 10 px.
_WARP_STD = 4.0 / _REFERENCE_UNIT_PX
_WARP_MODES = 16
_BIAS_SIGMA = 0.5
_BIAS_MODES = 6


@dataclass(frozen=True, eq=False)
class _FourierField:
    """A smooth random field in (x, y, slice_pos) as a sum of random Fourier modes.

    Frequencies drawn from a Gaussian give the same covariance as Gaussian-smoothed white
    noise, but the field can be evaluated on any grid and at any slice position, which a
    filtered noise image cannot.
    """

    freq: np.ndarray  # (K, 3) cycles per unit along x, y and slice_pos
    phase: np.ndarray  # (C, K) one row per field component
    std: float  # standard deviation of each component

    def __call__(self, x: np.ndarray, y: np.ndarray, slice_pos: float) -> np.ndarray:
        """Evaluate on the grid ``y`` (rows) x ``x`` (columns); returns ``(C, len(y), len(x))``."""
        # cos(a x + b y + c) = cos(a x) cos(b y + c) - sin(a x) sin(b y + c) turns the sum over
        # modes into one small product instead of K full-grid cosines; einsum rather than BLAS
        # because a threaded BLAS call this small is dominated by thread start-up on busy CPUs.
        ax = 2.0 * np.pi * np.outer(self.freq[:, 0], x)
        basis_x = np.concatenate([np.cos(ax), np.sin(ax)])
        by = 2.0 * np.pi * (np.outer(y, self.freq[:, 1]) + self.freq[:, 2] * slice_pos)
        weight = self.std * np.sqrt(2.0 / len(self.freq))
        fields = []
        for phase in self.phase:
            basis_y = np.concatenate([np.cos(by + phase), -np.sin(by + phase)], axis=1)
            fields.append(np.einsum("hk,kw->hw", basis_y, basis_x) * weight)
        return np.stack(fields)


def _random_field(
    rng: np.random.Generator, components: int, modes: int, sigma: float, std: float, z_freq: float
) -> _FourierField:
    # Gaussian smoothing with width sigma has a Gaussian power spectrum with this frequency std.
    f_std = 1.0 / (2.0 * np.sqrt(2.0) * np.pi * sigma)
    freq = np.column_stack([rng.normal(0.0, f_std, (modes, 2)), rng.normal(0.0, z_freq, modes)])
    phase = rng.uniform(0.0, 2.0 * np.pi, (components, modes))
    return _FourierField(freq=freq, phase=phase, std=std)


@dataclass(frozen=True, eq=False)
class PatientParams:
    """Anatomy and tissue-contrast parameters of one synthetic patient (see :func:`patient_params`).

    Lengths are in normalised units (half the frame width); scales are multiplicative jitters
    around 1. ``bladder_fill`` and ``rectal_gas`` change between treatment sessions of the same
    patient (:func:`session_params`); the rest is the patient's fixed anatomy.
    """

    body_scale: tuple[float, float]
    shift: tuple[float, float]
    rotation: float
    fat_thickness: float
    femur_scale: float
    sacrum_scale: float
    bladder_scale: float
    prostate_scale: float
    rectum_scale: float
    bladder_fill: float
    rectal_gas: float
    gas_pos: float
    ct_contrast: np.ndarray
    mr_contrast: np.ndarray
    warp: _FourierField


def _session_state(rng: np.random.Generator) -> dict[str, float]:
    has_gas = rng.random() < 0.5
    return {
        "bladder_fill": float(rng.uniform(0.6, 1.2)),
        "rectal_gas": float(rng.uniform(0.3, 0.75)) if has_gas else 0.0,
        "gas_pos": float(rng.uniform(0.1, 0.9)),
    }


def _contrast_jitter(rng: np.random.Generator) -> np.ndarray:
    jitter = rng.uniform(0.95, 1.05, len(TISSUES)).astype(np.float32)
    # Air and gas have fixed physical values; jittering them would leave the HU scale.
    jitter[[AIR, GAS]] = 1.0
    return jitter


def patient_params(rng: np.random.Generator) -> PatientParams:
    """Draw the anatomy of a new patient: scale jitters, pose, elastic warp, contrast jitter."""

    def jitter() -> float:
        return float(rng.uniform(0.9, 1.1))

    return PatientParams(
        body_scale=(jitter(), jitter()),
        shift=(float(rng.normal(0.0, 0.03)), float(rng.normal(0.0, 0.03))),
        rotation=float(rng.uniform(-0.07, 0.07)),
        fat_thickness=float(rng.uniform(0.03, 0.09)),
        femur_scale=jitter(),
        sacrum_scale=jitter(),
        bladder_scale=jitter(),
        prostate_scale=jitter(),
        rectum_scale=jitter(),
        ct_contrast=_contrast_jitter(rng),
        mr_contrast=_contrast_jitter(rng),
        # Two components: x and y displacement.
        warp=_random_field(rng, 2, _WARP_MODES, _WARP_SIGMA, _WARP_STD, z_freq=1.0),
        **_session_state(rng),
    )


def session_params(rng: np.random.Generator, params: PatientParams) -> PatientParams:
    """The same patient at another treatment session: new bladder filling and rectal gas."""
    return replace(params, **_session_state(rng))


def _section(slice_pos: float, centre: float, half_height: float) -> float:
    """Relative radius of an ellipsoid's cross-section at ``slice_pos`` (0 outside it)."""
    t = (slice_pos - centre) / half_height
    return float(np.sqrt(1.0 - t * t)) if abs(t) < 1.0 else 0.0


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _superellipse(x: np.ndarray, y: np.ndarray, ax: float, ay: float, power: float) -> np.ndarray:
    return np.abs(x / ax) ** power + np.abs(y / ay) ** power <= 1.0


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    unit = min(w / 2.0, h / (2.0 * _BODY_AP_EXTENT))
    x = (np.arange(w) + 0.5 - w / 2.0) / unit
    y = (np.arange(h) + 0.5 - h / 2.0) / unit
    return x, y


def pelvis_labels(params: PatientParams, slice_pos: float, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """The tissue label map (uint8, values from :data:`TISSUES`) of one axial slice.

    Labels are evaluated analytically at elastically displaced coordinates, which equals a
    nearest-neighbour warp of an infinitely fine label map: no staircase artefacts and no
    interpolation pass.
    """
    x, y = _grid(shape)
    disp = params.warp(x, y, slice_pos)
    xw = x[None, :] + disp[0] - params.shift[0]
    yw = y[:, None] + disp[1] - params.shift[1]
    cos, sin = np.cos(params.rotation), np.sin(params.rotation)
    px, py = cos * xw + sin * yw, cos * yw - sin * xw

    sx, sy = params.body_scale
    # The pelvis is widest at the hips, around the femoral heads.
    ax = 0.80 * sx * (1.0 + 0.05 * _section(slice_pos, 0.35, 0.8))
    ay = 0.50 * sy
    labels = np.full(px.shape, AIR, dtype=np.uint8)
    labels[_superellipse(px, py, ax, ay, 2.5)] = FAT
    t = params.fat_thickness
    labels[_superellipse(px, py, ax - t, ay - 0.8 * t, 2.5)] = MUSCLE
    labels[_ellipse(px, py, 0.0, 0.08 * sy, 0.32 * sx, 0.28 * sy)] = FAT

    # Bones with a cortical shell: (centre x, centre y, semi-axis x, semi-axis y) per side.
    femur = 0.16 * params.femur_scale * _section(slice_pos, 0.35, 0.32)
    pubis = 0.07 * params.femur_scale * _section(slice_pos, 0.1, 0.3)
    ilium = params.femur_scale * _section(slice_pos, 1.05, 0.45)
    bones = [
        (0.47 * sx, 0.06, femur, femur),
        (0.13 * sx, -0.33 * sy, 1.3 * pubis, pubis),
        (0.52 * sx, 0.12 * sy, 0.07 * ilium, 0.24 * ilium),
    ]
    for cx, cy, bx, by in bones:
        if min(bx, by) > 0.0:
            for side in (-1.0, 1.0):
                labels[_ellipse(px, py, side * cx, cy, bx, by)] = CORTEX
                if min(bx, by) > 0.035:
                    labels[_ellipse(px, py, side * cx, cy, bx - 0.035, by - 0.035)] = MARROW

    # Sacrum widens superiorly and narrows to the coccyx inferiorly.
    sac_x = (0.05 + 0.15 * slice_pos) * params.sacrum_scale
    sac_y = 0.06 * params.sacrum_scale
    labels[_ellipse(px, py, 0.0, 0.40 * sy, sac_x, sac_y)] = CORTEX
    labels[_ellipse(px, py, 0.0, 0.40 * sy, sac_x - 0.035, sac_y - 0.03)] = MARROW

    bladder = params.bladder_scale * params.bladder_fill * _section(slice_pos, 0.72, 0.42)
    if bladder > 0.0:
        labels[_ellipse(px, py, 0.0, -0.12 * sy, 0.20 * bladder, 0.15 * bladder)] = BLADDER
    prostate = params.prostate_scale * _section(slice_pos, 0.22, 0.3)
    if prostate > 0.0:
        labels[_ellipse(px, py, 0.0, 0.03 * sy, 0.10 * prostate, 0.085 * prostate)] = PROSTATE

    rx, ry, rcy = 0.09 * params.rectum_scale, 0.075 * params.rectum_scale, 0.25 * sy
    labels[_ellipse(px, py, 0.0, rcy, rx, ry)] = RECTUM
    gas = params.rectal_gas * _section(slice_pos, params.gas_pos, 0.35)
    if gas > 0.0:
        labels[_ellipse(px, py, 0.0, rcy, rx * gas, ry * gas)] = GAS
    return labels


def _bias_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    # Drawn afresh per slice, so the field needs no variation along slice_pos.
    field = _random_field(rng, 1, _BIAS_MODES, _BIAS_SIGMA, float(rng.uniform(0.15, 0.25)), z_freq=0.0)
    return np.exp(field(*_grid(shape), 0.0)[0])


def render_ct(rng: np.random.Generator, labels: np.ndarray, params: PatientParams) -> np.ndarray:
    """CT in HU (float32): tissue LUT, partial-volume blur, additive Gaussian noise of 10-20 HU."""
    hu = (CT_HU * params.ct_contrast)[labels]
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.5, 1.0))
    hu += rng.normal(0.0, rng.uniform(10.0, 20.0), hu.shape).astype(np.float32)
    return hu


def render_t2(rng: np.random.Generator, labels: np.ndarray, params: PatientParams) -> np.ndarray:
    """T2-weighted MR magnitude (float32, urine ~1): LUT, blur, bias field, Rician noise."""
    signal = (MR_T2 * params.mr_contrast)[labels]
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.5, 1.0))
    signal = signal * _bias_field(rng, labels.shape).astype(np.float32)
    sigma = rng.uniform(0.015, 0.03)
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)


def pelvis_phantom(
    rng: np.random.Generator, params: PatientParams, slice_pos: float, shape: tuple[int, int] = (256, 256)
) -> dict[str, np.ndarray]:
    """One slice of patient ``params`` at ``slice_pos`` in ``[0, 1]`` (inferior -> superior).

    ``rng`` draws the acquisition effects (noise, blur, bias), so one label map renders
    differently per call; pass a generator seeded per slice for reproducible images.

    Returns a dict with ``labels`` (uint8, :data:`TISSUES`), ``ct`` (float32 HU), ``mr``
    (float32 T2 magnitude, urine ~1) and ``body`` (bool mask of the patient, gas included).
    """
    labels = pelvis_labels(params, slice_pos, shape)
    return {
        "labels": labels,
        "ct": render_ct(rng, labels, params),
        "mr": render_t2(rng, labels, params),
        "body": labels != AIR,
    }
