"""Structural similarity (SSIM), batched in torch, 2D and 3D, one value per item.

The numbers reproduce ``skimage.metrics.structural_similarity`` for each preset:

- ``"gaussian"`` (default, Wang et al. 2004): 11-tap Gaussian window, sigma 1.5, truncated at
  3.5 sigma as skimage does, population covariance; equals ``structural_similarity(
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)``.
- ``"skimage"``: skimage's defaults, a 7-wide uniform window and sample covariance
  (``NP / (NP - 1)`` correction, ``NP`` = window voxels).

Both use K1 = 0.01 and K2 = 0.03. skimage filters with reflect padding and then drops a
``(win - 1) // 2`` border from the SSIM map before averaging, so only windows lying fully
inside the image count; computing the filters in 'valid' mode gives the same map without
padding. Multi-channel items get one SSIM per channel, averaged (skimage ``channel_axis``).

Speed: the window is separable, so each statistic is filtered by one 1D pass per axis,
written as a weighted sum of shifted views (``k`` fused multiply-adds over the tensor); on CPU
this beats both ``conv2d`` with a single-channel kernel and the reflect-padded scipy filters.
The five statistics (x, y, x², y², xy) are stacked so every pass covers all of them. On CPU
the batch is processed a few items at a time so the working set stays in cache; that also
avoids allocating (and page-faulting) hundreds of MB for a large batch. The statistics are
float64 (see :func:`ssim_per_item` for why); float32 would be about twice as fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bench_core.api import API_VERSION, BenchError
from bench_core.hookspecs import hookimpl
from bench_core.metricbase import PairedMetric, check_shapes

K1 = 0.01
K2 = 0.03

# Voxels (items x channels x spatial) per chunk. On CPU ~64k float64 values per statistic keeps
# the five stacked statistics and temporaries within L2/L3; measured best for 256x256 images.
# On GPUs chunking only bounds memory (~8 float64 maps per voxel at peak, ~0.5 GB per chunk).
_CPU_CHUNK_VOXELS = 1 << 16
_GPU_CHUNK_VOXELS = 1 << 23


@dataclass(frozen=True)
class _Preset:
    """Window and covariance choices of an SSIM preset."""

    window: str  # "gaussian" | "uniform"
    win_size: int
    sigma: float | None
    sample_covariance: bool

    def weights(self) -> list[float]:
        """Normalised 1D window taps (the same taps apply along every axis)."""
        if self.window == "uniform":
            return [1.0 / self.win_size] * self.win_size
        # scipy.ndimage's _gaussian_kernel1d, which skimage's gaussian filter uses.
        radius = self.win_size // 2
        taps = [math.exp(-0.5 * (i * i) / (self.sigma * self.sigma)) for i in range(-radius, radius + 1)]
        total = math.fsum(taps)
        return [t / total for t in taps]


_GAUSSIAN_SIGMA = 1.5
_GAUSSIAN_TRUNCATE = 3.5  # skimage's truncate for gaussian_weights=True: radius int(3.5 * 1.5 + 0.5) = 5

PRESETS: dict[str, _Preset] = {
    "gaussian": _Preset(
        window="gaussian",
        win_size=2 * int(_GAUSSIAN_TRUNCATE * _GAUSSIAN_SIGMA + 0.5) + 1,
        sigma=_GAUSSIAN_SIGMA,
        sample_covariance=False,
    ),
    "skimage": _Preset(window="uniform", win_size=7, sigma=None, sample_covariance=True),
}
"""Named SSIM configurations; see the module docstring."""


def _get_preset(preset: str) -> _Preset:
    try:
        return PRESETS[preset]
    except KeyError:
        raise BenchError(f"ssim: unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None


def _correlate_valid(t: torch.Tensor, taps: list[float], axis: int) -> torch.Tensor:
    """1D correlation of ``t`` with ``taps`` along ``axis``, keeping only full windows."""
    n_out = t.shape[axis] - len(taps) + 1
    out = t.narrow(axis, 0, n_out) * taps[0]
    for i in range(1, len(taps)):
        out.add_(t.narrow(axis, i, n_out), alpha=taps[i])
    return out


def _ssim_chunk(
    pred: torch.Tensor, target: torch.Tensor, data_range: float, preset: _Preset, dims: int
) -> torch.Tensor:
    """Per-item SSIM (float64, shape ``(n,)``) of one chunk of ``(n, C, *spatial)`` inputs."""
    stats = torch.empty((5, *pred.shape), dtype=torch.float64, device=pred.device)
    stats[0].copy_(pred)
    stats[1].copy_(target)
    torch.mul(stats[0], stats[0], out=stats[2])
    torch.mul(stats[1], stats[1], out=stats[3])
    torch.mul(stats[0], stats[1], out=stats[4])

    taps = preset.weights()
    for axis in range(stats.dim() - dims, stats.dim()):
        stats = _correlate_valid(stats, taps, axis)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(0)

    n_window = preset.win_size**dims
    cov_norm = n_window / (n_window - 1) if preset.sample_covariance else 1.0
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # In-place arithmetic on the five filtered maps: every extra temporary is another pass
    # over memory, which is what bounds this computation on CPU.
    mu_xy = mu_x * mu_y
    mu_xx = mu_x.square_()
    mu_yy = mu_y.square_()
    a2 = e_xy.sub_(mu_xy).mul_(2.0 * cov_norm).add_(c2)  # 2 cov(x, y) + C2
    b2 = e_xx.sub_(mu_xx).add_(e_yy.sub_(mu_yy)).mul_(cov_norm).add_(c2)  # var x + var y + C2
    a1 = mu_xy.mul_(2.0).add_(c1)  # 2 mu_x mu_y + C1
    b1 = mu_xx.add_(mu_yy).add_(c1)  # mu_x^2 + mu_y^2 + C1
    ssim_map = a1.mul_(a2).div_(b1.mul_(b2))
    # Mean over each channel's map (skimage averages per channel too), then over channels.
    return ssim_map.flatten(2).mean(2).mean(1)


@torch.no_grad()
def ssim_per_item(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    preset: str = "gaussian",
    dims: int = 2,
) -> torch.Tensor:
    """SSIM of each item of ``(N, C, *spatial)`` tensors, averaged over channels.

    Returns a float64 tensor of shape ``(N,)`` on the inputs' device. The local statistics are
    computed in float64 whatever the input dtype: ``var = E[x^2] - E[x]^2`` cancels, and in float32
    the rounding of ``E[x^2]`` in flat regions (backgrounds, masks) is identical at every pixel, so
    it does not average out and moves SSIM by up to ~4e-5 (skimage's own float32 path: ~1e-5).

    Every spatial side must be at least the window size of ``preset`` (11 for ``"gaussian"``,
    7 for ``"skimage"``). Range checks are the job of :class:`SSIM`; this function only checks
    shapes.
    """
    check_shapes("ssim", pred, target, dims)
    spec = _get_preset(preset)
    spatial = tuple(pred.shape[2:])
    if min(spatial) < spec.win_size:
        minimum = "x".join([str(spec.win_size)] * dims)
        raise BenchError(
            f"ssim: preset {preset!r} needs items of at least {minimum} voxels (window {spec.win_size}), "
            f"got spatial shape {'x'.join(map(str, spatial))}"
        )
    budget = _GPU_CHUNK_VOXELS if pred.device.type != "cpu" else _CPU_CHUNK_VOXELS
    step = max(1, budget // pred[0].numel())
    n = pred.shape[0]
    chunks = [_ssim_chunk(pred[i : i + step], target[i : i + step], data_range, spec, dims) for i in range(0, n, step)]
    return torch.cat(chunks)


class SSIM(PairedMetric):
    """Per-item SSIM, reported as mean and population std over all items seen.

    Options: ``data_range`` (explicit, never estimated), ``dims`` (2 or 3), ``preset``
    (``"gaussian"`` or ``"skimage"``, see :data:`PRESETS`), ``out_of_range`` (``"error"`` or
    ``"clamp"`` for inputs outside ``[0, data_range]``).
    """

    name = "ssim"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = True
    description = "Structural similarity of each output with its target, averaged over test items"
    headline = True
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        preset: str = "gaussian",
        out_of_range: str = "error",
    ) -> None:
        super().__init__(data_range, dims, out_of_range)
        self._preset = _get_preset(preset)
        self.preset = preset

    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-item values of a checked batch."""
        return ssim_per_item(pred, target, self.data_range, self.preset, self.spatial_dims)

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        spec = self._preset
        return {
            **super().settings(),
            "preset": self.preset,
            "window": spec.window,
            "win_size": spec.win_size,
            "sigma": spec.sigma,
            "truncate": _GAUSSIAN_TRUNCATE if spec.window == "gaussian" else None,
            "covariance": "sample" if spec.sample_covariance else "population",
            "K1": K1,
            "K2": K2,
            "precision": "float64 statistics",
            "border": "valid windows only (skimage crops (win_size - 1) // 2 per side)",
            "reduction": "mean SSIM map per channel, mean over channels per item, then mean over items",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`SSIM`."""
    return [SSIM]
