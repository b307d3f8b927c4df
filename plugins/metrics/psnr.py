"""Peak signal-to-noise ratio, one value per image (2D) or volume (3D).

``PSNR = 10 * log10(data_range**2 / MSE)`` with the MSE taken over all channels and voxels of
the item, as ``skimage.metrics.peak_signal_noise_ratio`` does for a single item. Identical
items have ``MSE = 0`` and an infinite PSNR, which would make the mean infinite; values are
capped at ``max_db`` (default 100 dB, recorded in settings). Some papers cap lower (the
paired-HVAE reference code used 50 dB): pass ``max_db=50`` to reproduce their numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from ._reduce import (
    OUT_OF_RANGE_POLICIES,
    RANGE_TOLERANCE,
    STD_KIND,
    PerItemAccumulator,
    check_options,
    check_range,
    check_shapes,
)

DEFAULT_MAX_DB = 100.0


@torch.no_grad()
def psnr_per_item(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    max_db: float = DEFAULT_MAX_DB,
    dims: int = 2,
) -> torch.Tensor:
    """PSNR in dB of each item of ``(N, C, *spatial)`` tensors, capped at ``max_db``.

    Returns a float64 tensor of shape ``(N,)`` on the inputs' device; the error is computed in
    float64 whatever the input dtype.
    Range checks are the job of :class:`PSNR`; this function only checks shapes.
    """
    check_shapes("psnr", pred, target, dims)
    diff = pred.to(torch.float64) - target.to(torch.float64)
    mse = diff.square_().flatten(1).mean(1)
    # MSE == 0 gives +inf here; the cap turns it into max_db.
    return (10.0 * torch.log10(data_range**2 / mse)).clamp(max=max_db)


class PSNR:
    """Per-item PSNR (dB), reported as mean and population std over all items seen.

    Options: ``data_range`` (explicit, never estimated), ``dims`` (2 or 3), ``max_db`` (cap
    for identical items), ``out_of_range`` (``"error"`` or ``"clamp"`` for inputs outside
    ``[0, data_range]``).
    """

    name = "psnr"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = True
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        max_db: float = DEFAULT_MAX_DB,
        out_of_range: str = "error",
    ) -> None:
        check_options(self.name, data_range, dims, type(self).dims)
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise BenchError(f"psnr: out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}")
        if not (isinstance(max_db, (int, float)) and math.isfinite(max_db)):
            raise BenchError(f"psnr: max_db must be a finite number, got {max_db!r}")
        self.data_range = float(data_range)
        # Not `self.dims`: that class attribute lists the supported dims for the registry.
        self.spatial_dims = dims
        self.max_db = float(max_db)
        self.out_of_range = out_of_range
        self._values = PerItemAccumulator(self.name)
        self._clamped = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Score a batch; returns the per-item PSNR values (shape ``(N,)``, float64)."""
        check_shapes(self.name, pred, target, self.spatial_dims)
        pred, n_pred = check_range(self.name, "pred", pred, self.data_range, self.out_of_range)
        target, n_target = check_range(self.name, "target", target, self.data_range, self.out_of_range)
        values = psnr_per_item(pred, target, self.data_range, self.max_db, self.spatial_dims)
        self._clamped += n_pred + n_target
        self._values.add(values)
        return values

    def compute(self) -> MetricValue:
        """Mean and population std of the per-item PSNR over everything seen since reset."""
        return self._values.summary(self.settings())

    def reset(self) -> None:
        """Forget accumulated values and the clamp count."""
        self._values.reset()
        self._clamped = 0

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "max_db": self.max_db,
            "mse": "mean over all channels and voxels of each item",
            "precision": "float64",
            "reduction": "per-item PSNR, then mean over items",
            "std": STD_KIND,
            "out_of_range": self.out_of_range,
            "range_tolerance": RANGE_TOLERANCE * self.data_range,
            "clamped_values": self._clamped,
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`PSNR`."""
    return [PSNR]
