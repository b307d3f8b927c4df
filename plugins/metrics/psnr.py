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

from bench_core.api import API_VERSION, BenchError
from bench_core.hookspecs import hookimpl
from bench_core.metricbase import PairedMetric, check_shapes

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


class PSNR(PairedMetric):
    """Per-item PSNR (dB), reported as mean and population std over all items seen.

    Options: ``data_range`` (explicit, never estimated), ``dims`` (2 or 3), ``max_db`` (cap
    for identical items), ``out_of_range`` (``"error"`` or ``"clamp"`` for inputs outside
    ``[0, data_range]``).
    """

    name = "psnr"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = True
    description = "Peak signal-to-noise ratio (dB) of each output against its target, averaged over test items"
    headline = True
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        max_db: float = DEFAULT_MAX_DB,
        out_of_range: str = "error",
    ) -> None:
        super().__init__(data_range, dims, out_of_range)
        if not (isinstance(max_db, (int, float)) and math.isfinite(max_db)):
            raise BenchError(f"psnr: max_db must be a finite number, got {max_db!r}")
        self.max_db = float(max_db)

    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-item values of a checked batch."""
        return psnr_per_item(pred, target, self.data_range, self.max_db, self.spatial_dims)

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **super().settings(),
            "max_db": self.max_db,
            "mse": "mean over all channels and voxels of each item",
            "precision": "float64",
            "reduction": "per-item PSNR, then mean over items",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`PSNR`."""
    return [PSNR]
