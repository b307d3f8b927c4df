"""Procedural pelvis phantom: determinism, shapes and physically plausible tissue contrasts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench_plugins.datasets import phantoms as P


def _slice(patient: int, slice_pos: float, shape: tuple[int, int] = (256, 256)) -> dict[str, np.ndarray]:
    params = P.patient_params(np.random.default_rng([7, patient]))
    return P.pelvis_phantom(np.random.default_rng([7, patient, 1]), params, slice_pos, shape)


def _core(labels: np.ndarray, tissue: int) -> np.ndarray:
    """Pixels of ``tissue`` away from its border, so partial-volume blur does not mix tissues."""
    return ndimage.binary_erosion(labels == tissue)


@pytest.mark.parametrize("shape", [(256, 256), (128, 256), (64, 48)])
def test_shapes_and_dtypes(shape: tuple[int, int]) -> None:
    out = _slice(0, 0.5, shape)
    assert set(out) == {"labels", "ct", "mr", "body"}
    assert {k: v.shape for k, v in out.items()} == dict.fromkeys(out, shape)
    assert out["labels"].dtype == np.uint8 and out["labels"].max() < len(P.TISSUES)
    assert out["ct"].dtype == np.float32 and out["mr"].dtype == np.float32
    assert out["body"].dtype == bool
    assert np.isfinite(out["ct"]).all() and np.isfinite(out["mr"]).all()
    assert (out["mr"] >= 0).all()  # magnitude images


def test_deterministic_for_equal_seeds_and_different_otherwise() -> None:
    a, b = _slice(3, 0.4), _slice(3, 0.4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = _slice(4, 0.4)
    assert not np.array_equal(a["labels"], other["labels"])


@pytest.mark.parametrize("patient", range(4))
def test_tissue_contrasts_are_physical(patient: int) -> None:
    # At 0.6 the slice holds femoral heads, sacrum and bladder for every jittered patient.
    out = _slice(patient, 0.6)
    labels, ct, mr = out["labels"], out["ct"], out["mr"]
    bone, bladder, fat, muscle = (_core(labels, t) for t in (P.CORTEX, P.BLADDER, P.FAT, P.MUSCLE))
    assert bone.sum() > 20 and bladder.sum() > 100

    assert ct[bone].mean() > 700  # bone bright on CT
    assert mr[bone].mean() < min(mr[muscle].mean(), mr[fat].mean())  # and dark on T2
    assert 0.0 <= ct[bladder].mean() <= 20.0  # urine near water
    assert ct[fat].mean() < -50.0
    t2_means = {t: mr[_core(labels, t)].mean() for t in range(1, len(P.TISSUES)) if _core(labels, t).any()}
    assert max(t2_means, key=t2_means.get) == P.BLADDER  # urine brightest on T2


def test_body_mask_and_air() -> None:
    out = _slice(1, 0.3)
    np.testing.assert_array_equal(out["body"], out["labels"] != P.AIR)
    outside = ndimage.binary_erosion(~out["body"], iterations=3)
    assert abs(out["ct"][outside].mean() + 1000.0) < 10.0
    assert out["mr"][outside].mean() < 0.1


def test_neighbouring_slices_change_smoothly() -> None:
    params = P.patient_params(np.random.default_rng(11))
    base = P.pelvis_labels(params, 0.5)
    near = P.pelvis_labels(params, 0.51)
    far = P.pelvis_labels(params, 0.95)
    agree_near = (base == near).mean()
    assert agree_near > 0.97
    assert (base == far).mean() < agree_near


def test_session_keeps_anatomy_and_changes_filling() -> None:
    rng = np.random.default_rng(5)
    patient = P.patient_params(rng)
    session = P.session_params(rng, patient)
    assert session.body_scale == patient.body_scale and session.warp is patient.warp
    assert session.bladder_fill != patient.bladder_fill


def test_seg_lut_maps_to_hipmri_classes() -> None:
    seg = P.SEG_LUT[_slice(2, 0.3)["labels"]]
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= set(range(6))
    assert P.SEG_LUT[P.PROSTATE] == 5 and P.SEG_LUT[P.BLADDER] == 3 and P.SEG_LUT[P.AIR] == 0
