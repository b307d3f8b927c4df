"""Volumes as 2D images for the feature-space metrics: the three orthogonal centre-slice planes ("2.5D")."""

from __future__ import annotations

import torch

from bench_core.api import BenchError

# Planes of a (D, H, W) volume, named by the axis the centre slice cuts (see plane_slices).
PLANES = ("axial", "coronal", "sagittal")
PLANE_SLICES = {
    "axial": "centre slice along D, x[:, :, D // 2] (an (H, W) image)",
    "coronal": "centre slice along H, x[:, :, :, H // 2] (a (D, W) image)",
    "sagittal": "centre slice along W, x[:, :, :, :, W // 2] (a (D, H) image)",
}


def plane_slices(x: torch.Tensor, dims: int) -> list[torch.Tensor]:
    """``(N, C, *spatial)`` items -> 2D batches ``(N, C, H, W)``: the items in 2D, three centre-slice planes in 3D.

    3D: one batch per plane of :data:`PLANES`, the centre slices of every volume: axial
    ``x[:, :, D // 2]``, coronal ``x[:, :, :, H // 2]``, sagittal ``x[:, :, :, :, W // 2]``. The
    names assume the dataset's (D, H, W) orientation: D the inferior-superior (slice) axis, H
    anterior-posterior, W left-right, as in a stack of axial slices. Volumes in NIfTI voxel
    order (X, Y, Z), e.g. RAS, have D = left-right: there the ``axial`` plane is anatomically
    sagittal and ``sagittal`` axial.
    """
    if dims == 2:
        return [x]
    d, h, w = x.shape[2:]
    return [x[:, :, d // 2], x[:, :, :, h // 2], x[:, :, :, :, w // 2]]


def to_inception_batches(x: torch.Tensor, dims: int, data_range: float) -> list[torch.Tensor]:
    """``(N, C, *spatial)`` items in ``[0, data_range]`` -> 3-channel 2D batches in ``[0, 1]``.

    The planes of :func:`plane_slices`; channels must be 1 (repeated to 3) or 3.
    """
    channels = x.shape[1]
    if channels not in (1, 3):
        raise BenchError(f"Inception features need 1 or 3 channels, got {channels}")
    x = x / data_range
    if channels == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    return plane_slices(x, dims)
