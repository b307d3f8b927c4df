"""Seed 001's training augmentations (``models.md`` 2.5), from the libraries the source builds them with.

The 3D very deep VAE's training pipeline draws, per volume, a chain of MONAI and TorchIO
random transforms, each applied with probability ``p`` (0.1 in the source), then z-scores the
volume and rescales it to ``[-1, 1]``. This module builds the same chain from the same
libraries (the optional extra ``pip install "medgen-bench[3d]"``, versions pinned in
constraints.txt); ``vdvae3d`` applies it to each training volume when its config sets
``source_augment: true`` (training only: evaluation never sees it).

Where it differs from the source, and why:

- the source's own ``Anisotropiser`` (scale 0.8-0.95) is not a library transform: TorchIO's
  ``RandomAnisotropy`` with downsampling 1/0.95-1/0.8 along one random axis stands in;
- the source's custom 3D "haircut" crop is left out (no library transform does it);
- our volumes arrive already percentile-clamped, z-scored and scaled to ``[-1, 1]`` (the
  dataset's preprocessing), where the source applies its anisotropy step before that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench_core.api import BenchError

INSTALL = 'pip install -c constraints.txt "medgen-bench[3d]"  (MONAI and TorchIO)'

# Seed 001's ranges (models.md 2.5).
ROTATE = math.radians(5.0)  # +-5 degrees about each axis
SHEAR = math.radians(5.0)
TRANSLATE = 10  # voxels
SCALE = 0.1
CROP_FRACTION = 0.95


def _libraries():
    try:
        import torchio
        from monai import transforms
    except ImportError as exc:
        raise BenchError(f"vdvae3d source_augment needs MONAI and TorchIO, which are not installed: {INSTALL}") from exc
    return transforms, torchio


def source001_augment(size: int, p: float = 0.1, seed: int | None = None) -> Callable[[Tensor], Tensor]:
    """The training augmentation of one ``(C, D, H, W)`` volume in ``[-1, 1]`` with edge ``size``.

    The chain, in the source's order: anisotropic down-resampling; histogram shift (10-15
    control points); intensity scale +-5%; TorchIO blur (sigma 0.1-0.5), noise (sigma
    0.01-0.3), ghosting (4-10 ghosts), bias field (0.5), motion (1 transform), spike
    (intensity 1-2); affine (rotation and shear +-5 degrees, translation 10 voxels, scale +-10%,
    border padding); a random crop to 95% (always, as the source), elastic deformation (sigma
    1-3, magnitude 3-5); resize back to ``size``, z-score, rescale to ``[-1, 1]``. Each random
    transform but the crop applies with probability ``p``.

    MONAI's transforms draw from NumPy generators, TorchIO's from torch's. The NumPy
    generators are reseeded for every volume from a draw of torch's generator (``seed``
    given: a generator of its own seeded with it), so the whole chain is a function of torch's
    random stream: the engine saves that stream with the training state, and a resumed run
    draws the same augmentations as one that was never interrupted.
    """
    anisotropy, monai_first, torchio_chain, monai_last = _chain(size, p)
    seeds = None if seed is None else torch.Generator().manual_seed(seed)

    def augment(volume: Tensor) -> Tensor:
        first_seed = int(torch.randint(2**31 - 2, (), generator=seeds).item())
        monai_first.set_random_state(seed=first_seed)
        monai_last.set_random_state(seed=first_seed + 1)
        x = volume.detach().float().cpu()
        x = anisotropy(x)
        x = torch.as_tensor(monai_first(x))
        x = torchio_chain(x)
        x = torch.as_tensor(monai_last(x))
        return x.as_subclass(Tensor).to(volume.device, volume.dtype)

    return augment


def _chain(size: int, p: float) -> tuple[Any, Any, Any, Any]:
    """The chain's four parts, in the order they run: anisotropy, MONAI intensity, TorchIO artefacts, MONAI spatial."""
    mt, tio = _libraries()
    crop = max(1, round(CROP_FRACTION * size))
    monai_first = mt.Compose(
        [
            mt.RandHistogramShift(num_control_points=(10, 15), prob=p),
            mt.RandScaleIntensity(factors=0.05, prob=p),
        ]
    )
    torchio_chain = tio.Compose(
        [
            tio.RandomBlur(std=(0.1, 0.5), p=p),
            tio.RandomNoise(mean=0, std=(0.01, 0.3), p=p),
            tio.RandomGhosting(num_ghosts=(4, 10), p=p),
            tio.RandomBiasField(coefficients=0.5, p=p),
            tio.RandomMotion(num_transforms=1, p=p),
            tio.RandomSpike(intensity=(1, 2), p=p),
        ]
    )
    monai_last = mt.Compose(
        [
            mt.RandAffine(
                prob=p,
                rotate_range=(ROTATE,) * 3,
                shear_range=(SHEAR,) * 6,
                translate_range=(TRANSLATE,) * 3,
                scale_range=(SCALE,) * 3,
                padding_mode="border",
            ),
            mt.RandSpatialCrop(roi_size=(crop,) * 3, random_center=True, random_size=False),
            mt.Rand3DElastic(sigma_range=(1, 3), magnitude_range=(3, 5), prob=p, padding_mode="border"),
            mt.Resize(spatial_size=(size,) * 3),
            mt.NormalizeIntensity(),
            mt.ScaleIntensity(minv=-1.0, maxv=1.0),
        ]
    )
    anisotropy = tio.RandomAnisotropy(downsampling=(1 / 0.95, 1 / 0.8), p=p)
    return anisotropy, monai_first, torchio_chain, monai_last
