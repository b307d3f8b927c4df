"""Sliced Wasserstein distance between Laplacian-pyramid patch descriptors (Karras et al. 2018).

The multi-scale statistical similarity of "Progressive Growing of GANs" (their
``metrics/sliced_wasserstein.py``), generalised to 3D, with two documented differences:

1. Pyramid: each item's Laplacian pyramid from full resolution down to the last level whose
   smallest side is at least ``min_resolution`` (default 16); 5-tap binomial filter
   ``[1, 4, 6, 4, 1] / 16`` per axis with mirror (reflect) borders, subsampling by 2; the
   coarsest level is the Gaussian residual. As in the reference.
2. Descriptors: ``patches_per_item`` (default 128) random ``7x7`` (``7x7x7`` in 3D) patches
   per item and level, all channels, flattened; positions uniform, drawn from a generator
   seeded by ``(seed, side, item index)`` so they do not depend on batching. Each side's
   descriptors are normalised per channel by their own mean and std, as in the reference.
3. Distance per level: ``directions`` (default 512 = the reference's 4 repeats x 128) random
   unit directions (seeded); the 1D Wasserstein-1 distance of the projections, averaged over
   directions. The reference sorts and subtracts, which needs equal counts; this computes the
   exact 1D W1 ``∫|F_a - F_b|`` and equals it for equal counts (difference 1).
4. Value: mean over levels, multiplied by 1000 as the reference reports it; ``std`` is None.
5. Memory (difference 2): each side keeps the descriptors of at most ``max_items`` items
   (default 512, seeded reservoir sampling beyond), not all of them: float32, ~64 MB per side
   for 256x256 gray (five levels), ~270 MB per side for 64^3 volumes (three levels of 343-d
   descriptors); lower ``max_items`` or ``patches_per_item`` for large volumes.

Because descriptors are standardised per side, the distance ignores global affine intensity
changes (``a·x + b``) and, patches being taken at random positions, translations: it compares
local structure (edges, texture, noise) at each scale. Both sides must have the same channel
count and spatial shape.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl
from bench_core.metricbase import OUT_OF_RANGE_POLICIES, RANGE_TOLERANCE, check_options, check_range

from ._reduce import Reservoir

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)
SCALE = 1000.0
_SIDES = ("real", "fake")


def _blur(x: torch.Tensor, dims: int, gain: float = 1.0) -> torch.Tensor:
    """Separable binomial filter of float64 ``(N, C, *spatial)`` with reflect borders."""
    taps = [t / 16.0 * gain for t in _BINOMIAL]
    for axis in range(x.dim() - dims, x.dim()):
        moved = F.pad(x.movedim(axis, -1).reshape(-1, 1, x.shape[axis]), (2, 2), mode="reflect")
        out = sum(w * moved[..., i : i + x.shape[axis]] for i, w in enumerate(taps))
        x = out.reshape(*x.movedim(axis, -1).shape).movedim(-1, axis)
    return x


def laplacian_pyramid(x: torch.Tensor, dims: int, min_resolution: int) -> list[torch.Tensor]:
    """Laplacian pyramid levels of ``(N, C, *spatial)``, finest first, the coarsest a Gaussian level."""
    levels = [x]
    while min(levels[-1].shape[2:]) // 2 >= min_resolution:
        fine = levels[-1]
        index = (slice(None), slice(None), *[slice(None, None, 2)] * dims)
        coarse = _blur(fine, dims)[index]
        up = torch.zeros_like(fine)
        up[index] = coarse
        # Zero insertion keeps 1 of 2^dims samples, so the up-sampling filter has gain 2 per axis.
        levels[-1] = fine - _blur(up, dims, gain=2.0)
        levels.append(coarse)
    return levels


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W1 between the empirical distributions of the rows of ``a`` (k, n) and ``b`` (k, m)."""
    a = a.sort(dim=1).values.contiguous()
    b = b.sort(dim=1).values.contiguous()
    both, _ = torch.cat([a, b], dim=1).sort(dim=1)
    gaps = both[:, 1:] - both[:, :-1]
    points = both[:, :-1].contiguous()
    cdf_a = torch.searchsorted(a, points, right=True) / a.shape[1]
    cdf_b = torch.searchsorted(b, points, right=True) / b.shape[1]
    return ((cdf_a - cdf_b).abs() * gaps).sum(dim=1)


class SWD:
    """Sliced Wasserstein distance (x1000) between predictions and targets; see the module docstring.

    Options: ``data_range``, ``dims``, ``patch_size`` (7), ``patches_per_item`` (128),
    ``directions`` (512), ``min_resolution`` (16), ``max_items`` (512 per side), ``seed`` (0),
    ``out_of_range``.
    """

    name = "swd"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = False
    description = "Sliced Wasserstein distance (x1000) between Laplacian-pyramid patches of outputs and targets"
    headline = False
    kind = "distribution"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        patch_size: int = 7,
        patches_per_item: int = 128,
        directions: int = 512,
        min_resolution: int = 16,
        max_items: int = 512,
        seed: int = 0,
        out_of_range: str = "error",
    ) -> None:
        check_options(self.name, data_range, dims, type(self).dims)
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise BenchError(f"swd: out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}")
        options = {"patch_size": patch_size, "patches_per_item": patches_per_item, "directions": directions,
                   "min_resolution": min_resolution, "max_items": max_items}  # fmt: skip
        for key, value in options.items():
            if not (isinstance(value, int) and value >= 1):
                raise BenchError(f"swd: {key} must be a positive integer, got {value!r}")
        self.data_range = float(data_range)
        # Not `self.dims`: that class attribute lists the supported dims for the registry.
        self.spatial_dims = dims
        self.patch_size = patch_size
        self.patches_per_item = patches_per_item
        self.directions = directions
        self.min_resolution = min_resolution
        self.max_items = max_items
        self.seed = int(seed)
        self.out_of_range = out_of_range
        # Reservoir rows are items: (levels, patches, descriptor) arrays.
        self._sides = {"real": Reservoir(max_items, self.seed * 2), "fake": Reservoir(max_items, self.seed * 2 + 1)}
        self._layout: tuple[int, ...] | None = None
        self._clamped = 0

    def _descriptors(self, x: torch.Tensor, side: str, first: int) -> np.ndarray:
        """``(N, levels, patches, C * patch^dims)`` float32 descriptors of items ``first..first+N-1``."""
        levels = laplacian_pyramid((x / self.data_range).to(torch.float64), self.spatial_dims, self.min_resolution)
        p = self.patch_size
        n = x.shape[0]
        out = []
        for i in range(n):
            # An explicit integer, not hash(): str hashes change from process to process.
            gen = torch.Generator().manual_seed(((self.seed * 2 + _SIDES.index(side)) << 32) + first + i)
            per_level = []
            for level in levels:
                item = level[i].cpu()
                corners = [torch.randint(0, s - p + 1, (self.patches_per_item,), generator=gen) for s in item.shape[1:]]
                offsets = torch.meshgrid(*[torch.arange(p)] * self.spatial_dims, indexing="ij")
                index = [c.view(-1, *[1] * self.spatial_dims) + o for c, o in zip(corners, offsets, strict=True)]
                patches = item[(slice(None), *index)]  # (C, patches, p, ..., p)
                per_level.append(patches.movedim(0, 1).flatten(1).float().numpy())
            out.append(np.stack(per_level))
        return np.stack(out)

    def _check(self, what: str, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != self.spatial_dims + 2 or not len(x):
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise BenchError(f"swd: expected a non-empty float {layout} {what}, got {getattr(x, 'shape', x)}")
        if min(x.shape[2:]) < self.patch_size:
            raise BenchError(f"swd: {what} sides {tuple(x.shape[2:])} are smaller than the patch ({self.patch_size})")
        layout = tuple(x.shape[1:])
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise BenchError(f"swd: {what} items have shape {layout}, earlier items {self._layout}")
        x, clamped = check_range(self.name, what, x, self.data_range, self.out_of_range)
        self._clamped += clamped
        return x

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add generated (``pred``) and real (``target``) items; their counts may differ."""
        pred = self._check("pred", pred)
        target = self._check("target", target)
        for side, x in (("fake", pred), ("real", target)):
            reservoir = self._sides[side]
            reservoir.add(self._descriptors(x, side, reservoir.seen))

    def compute(self) -> MetricValue:
        """Mean over pyramid levels of the sliced W1 distance, x1000."""
        real, fake = self._sides["real"], self._sides["fake"]
        if not (real.seen and fake.seen):
            raise BenchError(f"swd: needs real and generated items, got {real.seen} and {fake.seen}")
        a = torch.from_numpy(real.rows()).double()  # (items, levels, patches, dim)
        b = torch.from_numpy(fake.rows()).double()
        dim = a.shape[-1]
        gen = torch.Generator().manual_seed(self.seed)
        directions = torch.randn(dim, self.directions, generator=gen, dtype=torch.float64)
        directions /= directions.norm(dim=0, keepdim=True)
        per_level = []
        for level in range(a.shape[1]):
            da = _normalise(a[:, level].reshape(-1, dim), self._layout[0])
            db = _normalise(b[:, level].reshape(-1, dim), self._layout[0])
            per_level.append(float(wasserstein_1d((da @ directions).T, (db @ directions).T).mean()))
        value = SCALE * math.fsum(per_level) / len(per_level)
        counters = {"clamped_values": self._clamped}
        return MetricValue(value=value, std=None, n=fake.seen, settings=self.settings(), counters=counters)

    def reset(self) -> None:
        """Forget kept descriptors and counts."""
        for reservoir in self._sides.values():
            reservoir.reset()
        self._layout = None
        self._clamped = 0

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            "descriptor": f"Laplacian pyramid (binomial 5-tap, reflect), {self.patch_size}^{self.spatial_dims} "
            "patches of all channels, per-channel normalised per side (Karras et al. 2018)",
            "patch_size": self.patch_size,
            "patches_per_item": self.patches_per_item,
            "min_resolution": self.min_resolution,
            "directions": self.directions,
            "distance": "exact 1D Wasserstein-1 per direction, mean over directions, mean over levels",
            "scale": SCALE,
            "seed": self.seed,
            "max_items": self.max_items,
            "items_kept": [
                min(self._sides["real"].seen, self.max_items),
                min(self._sides["fake"].seen, self.max_items),
            ],
            "n_real": self._sides["real"].seen,
            "n_fake": self._sides["fake"].seen,
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "out_of_range": self.out_of_range,
            "range_tolerance": RANGE_TOLERANCE * self.data_range,
        }


def _normalise(desc: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel standardisation of ``(n, C * patch^dims)`` descriptors, as the reference does."""
    view = desc.view(desc.shape[0], channels, -1)
    mean = view.mean(dim=(0, 2), keepdim=True)
    std = view.std(dim=(0, 2), keepdim=True, unbiased=False).clamp(min=1e-12)
    return ((view - mean) / std).view_as(desc)


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`SWD`."""
    return [SWD]
