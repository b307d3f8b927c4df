"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), one value per image (2D) or volume (3D).

At scale ``j = 1..M`` (``M = scales``, default 5) the contrast-structure term
``cs_j = mean((2σxy + C2) / (σx² + σy² + C2))`` is taken over the valid windows of the image,
and at the last scale the full SSIM ``s_M = mean(l · cs)`` (luminance times contrast-structure
per window, as Wang's reference code, ``tf.image.ssim_multiscale``, pytorch-msssim and
torchmetrics do). Then ``MS-SSIM = s_M^{w_M} · Π_{j<M} cs_j^{w_j}``, per channel, averaged over
channels.

- Window: :mod:`.ssim`'s ``"gaussian"`` preset (11 taps, sigma 1.5, population covariance,
  K1 = 0.01, K2 = 0.03), valid windows only, float64 statistics.
- Weights: (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); with ``scales < 5`` the first ``scales``
  weights are used, renormalised to sum to 1 (recorded in the settings).
- Downsampling between scales: 2x2(x2) average pooling; an odd side is first extended by
  repeating its last row, which is what Wang's MATLAB ``msssim.m`` does (``imfilter`` with a
  2x2 mean filter and ``'symmetric'`` boundary, then ``(1:2:end)``). Sides therefore shrink to
  ``ceil(n / 2)``; even sizes give the same numbers as every other implementation.
- Negative ``cs_j`` or ``s_M`` (anti-correlated images) would make the fractional powers
  undefined; they are clamped to 0, as ``tf.image.ssim_multiscale`` and pytorch-msssim do.

The smallest side must still hold one window at the coarsest scale:
``ceil(n / 2^(M-1)) >= 11``, i.e. ``n >= 10 · 2^(M-1) + 1`` (161 for 5 scales, 81 for 4,
41 for 3); smaller items raise a :class:`BenchError` that names the minimum and the number of
scales that would fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bench_core.api import API_VERSION, BenchError
from bench_core.hookspecs import hookimpl
from bench_core.metricbase import PairedMetric, check_shapes

from .ssim import _GAUSSIAN_TRUNCATE, K1, K2, PRESETS, _correlate_valid

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WINDOW = PRESETS["gaussian"]
# Voxels per chunk on CPU: the five float64 statistics of a chunk stay in cache (as in .ssim).
_CPU_CHUNK_VOXELS = 1 << 16
_GPU_CHUNK_VOXELS = 1 << 23


def min_side(scales: int, win_size: int = _WINDOW.win_size) -> int:
    """Smallest side for which ``scales`` scales keep one full window at the coarsest scale."""
    return (win_size - 1) * 2 ** (scales - 1) + 1


def scale_weights(scales: int) -> list[float]:
    """The first ``scales`` standard weights, renormalised to sum to 1."""
    chosen = MS_SSIM_WEIGHTS[:scales]
    total = math.fsum(chosen)
    return [w / total for w in chosen]


def _downsample(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Average over 2^dims blocks; odd sides repeat their last row first (Wang's 'symmetric' filter)."""
    pad: list[int] = []
    for size in reversed(x.shape[2:]):  # F.pad lists the last axis first
        pad += [0, size % 2]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return F.avg_pool2d(x, 2) if dims == 2 else F.avg_pool3d(x, 2)


def _cs_and_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(item, channel) mean contrast-structure and mean SSIM of float64 ``(n, C, *spatial)``."""
    stats = torch.stack([x, y, x * x, y * y, x * y])
    taps = _WINDOW.weights()
    for axis in range(stats.dim() - dims, stats.dim()):
        stats = _correlate_valid(stats, taps, axis)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(0)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    mu_xy = mu_x * mu_y
    mu_xx = mu_x * mu_x
    mu_yy = mu_y * mu_y
    cs_map = (2.0 * (e_xy - mu_xy) + c2) / (e_xx - mu_xx + e_yy - mu_yy + c2)
    lum_map = (2.0 * mu_xy + c1) / (mu_xx + mu_yy + c1)
    return cs_map.flatten(2).mean(2), (lum_map * cs_map).flatten(2).mean(2)


def _msssim_chunk(pred: torch.Tensor, target: torch.Tensor, data_range: float, scales: int, dims: int) -> torch.Tensor:
    x = pred.to(torch.float64)
    y = target.to(torch.float64)
    weights = scale_weights(scales)
    result = torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
    for j in range(scales):
        cs, ssim = _cs_and_ssim(x, y, data_range, dims)
        term = ssim if j == scales - 1 else cs
        result *= term.clamp(min=0.0).pow(weights[j])
        if j < scales - 1:
            x = _downsample(x, dims)
            y = _downsample(y, dims)
    return result.mean(1)


@torch.no_grad()
def msssim_per_item(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, scales: int = 5, dims: int = 2
) -> torch.Tensor:
    """MS-SSIM of each item of ``(N, C, *spatial)`` tensors, averaged over channels; float64 ``(N,)``."""
    check_shapes("ms-ssim", pred, target, dims)
    spatial = tuple(pred.shape[2:])
    need = min_side(scales)
    if min(spatial) < need:
        fits = [s for s in range(1, len(MS_SSIM_WEIGHTS) + 1) if min(spatial) >= min_side(s)]
        hint = f"; pass scales={fits[-1]} (needs {'x'.join([str(min_side(fits[-1]))] * dims)})" if fits else ""
        window = "x".join([str(_WINDOW.win_size)] * dims)
        raise BenchError(
            f"ms-ssim: needs at least {'x'.join([str(need)] * dims)} for {scales} scales with an {window} window, "
            f"got {'x'.join(map(str, spatial))}{hint}"
        )
    budget = _GPU_CHUNK_VOXELS if pred.device.type != "cpu" else _CPU_CHUNK_VOXELS
    step = max(1, budget // pred[0].numel())
    return torch.cat(
        [
            _msssim_chunk(pred[i : i + step], target[i : i + step], data_range, scales, dims)
            for i in range(0, pred.shape[0], step)
        ]
    )


class MSSSIM(PairedMetric):
    """Per-item MS-SSIM, reported as mean and population std over all items seen.

    Options: ``data_range`` (explicit, never estimated), ``dims`` (2 or 3), ``scales`` (1-5,
    default 5; fewer for small images, weights renormalised), ``out_of_range`` (``"error"`` or
    ``"clamp"``).
    """

    name = "ms-ssim"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = True
    description = "Multi-scale structural similarity of each output with its target, averaged over test items"
    headline = False
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(self, data_range: float = 1.0, dims: int = 2, scales: int = 5, out_of_range: str = "error") -> None:
        super().__init__(data_range, dims, out_of_range)
        if not (isinstance(scales, int) and 1 <= scales <= len(MS_SSIM_WEIGHTS)):
            raise BenchError(f"ms-ssim: scales must be an integer from 1 to {len(MS_SSIM_WEIGHTS)}, got {scales!r}")
        self.scales = scales

    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-item values of a checked batch."""
        return msssim_per_item(pred, target, self.data_range, self.scales, self.spatial_dims)

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **super().settings(),
            "scales": self.scales,
            "weights": scale_weights(self.scales),
            "weights_source": "Wang et al. 2003 (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), first `scales`, renormalised",
            "window": "gaussian",
            "win_size": _WINDOW.win_size,
            "sigma": _WINDOW.sigma,
            "truncate": _GAUSSIAN_TRUNCATE,
            "covariance": "population",
            "K1": K1,
            "K2": K2,
            "terms": "contrast-structure at scales 1..M-1, full SSIM (luminance x cs) at scale M; negatives -> 0",
            "downsampling": "2x average pooling, odd sides extended by repeating the last row (Wang's msssim.m)",
            "precision": "float64 statistics",
            "border": "valid windows only",
            "reduction": "per channel, mean over channels per item, then mean over items",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`MSSSIM`."""
    return [MSSSIM]
