"""Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel over random subsets.

Binkowski et al. 2018, as torch-fidelity and clean-fid compute it, on the same features as FID
(:mod:`.inception`; shared network and feature cache, so FID and KID together extract once):

- kernel ``k(x, y) = (xᵀy / d + 1)³`` (degree 3, gamma ``1/d``, coef 1), ``d`` the feature size;
- for each of ``n_subsets`` subsets, ``m = min(subset_size, n_real, n_fake)`` real and ``m``
  generated features drawn without replacement, and the unbiased estimator
  ``MMD² = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m-1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m-1)) - 2 Σ_{i,j} k(xᵢ,yⱼ)/m²``;
- value = mean over subsets, std = population std over subsets (torch-fidelity's ``np.std``).

Sampling: ``rng = numpy.random.default_rng(seed)``; per subset, ``rng.choice(n_real, m,
replace=False)`` then ``rng.choice(n_fake, m, replace=False)``. The estimator is unbiased, so
values near zero can be negative; they are reported as they are.

Memory: unlike FID, KID needs the features themselves. Each side keeps at most
``max_samples`` feature vectors (default 10 000, ~80 MB per side at 2048 dims), chosen by
seeded reservoir sampling when more arrive (recorded in the settings); 3D keeps that many per
plane, three times the memory. When the kernel matrix of all kept features is cheaper than the
per-subset kernels and fits in 512 MB, it is computed once and indexed; both give the same
numbers up to float64 rounding.

3D volumes: one feature set per plane of centre slices (``axial`` along D, ``coronal`` along H,
``sagittal`` along W; see :mod:`.fid`), each plane's KID exactly the 2D KID of those slices,
reported as components (rows ``kid.axial`` ...). The planes use the same reservoir seeds and
the same subset indices, so subset ``s`` holds the same volumes in every plane; the value is
the mean of the per-plane values and its std the population std over subsets of the
plane-mean MMD² (recorded in the settings as ``std``). ``max_samples`` applies per plane.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from ._reduce import Reservoir
from .features import FeatureMetricBase

_GRAM_BYTES = 512 * 1024 * 1024
_PLANE_STD = "population std over subsets of this plane's MMD^2"


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x yᵀ / d + 1)³`` in float64."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from the three ``m x m`` kernel matrices (diagonals of ``k_xx``, ``k_yy`` excluded)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


class KID(FeatureMetricBase):
    """Kernel Inception Distance between predictions (generated) and targets (real).

    Options: those of :class:`~.fid.FID` (``weights``, ``feature_dims``, ``out_of_range``,
    ``feature_cache``, ``features``) plus
    ``subset_size`` (1000), ``n_subsets`` (100), ``seed`` (0, subset and reservoir sampling)
    and ``max_samples`` (10 000 feature vectors kept per side, per plane in 3D).
    """

    name = "kid"
    version = "1.1"  # 1.1: dims=3 is the mean of per-plane KIDs (1.0 pooled the planes)
    api_version = API_VERSION
    higher_is_better = False
    description = "Kernel (polynomial MMD) distance between output and target features, over subsets"
    headline = False
    kind = "distribution"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        weights: str | None = None,
        feature_dims: int = 2048,
        subset_size: int = 1000,
        n_subsets: int = 100,
        seed: int = 0,
        max_samples: int = 10_000,
        out_of_range: str = "error",
        feature_cache: bool = True,
        features: str = "inception",
    ) -> None:
        for option, value in (("subset_size", subset_size), ("n_subsets", n_subsets), ("max_samples", max_samples)):
            if not (isinstance(value, int) and value >= 1):
                raise BenchError(f"kid: {option} must be a positive integer, got {value!r}")
        super().__init__(data_range, dims, weights, feature_dims, out_of_range, feature_cache, features)
        self.subset_size = subset_size
        self.n_subsets = n_subsets
        self.seed = int(seed)
        self.max_samples = max_samples
        # Different seeds for the two sides (the same seed would replace the same slots), but the
        # same for every plane: each plane then keeps the same volumes.
        self._real = [Reservoir(max_samples, seed=self.seed * 2) for _ in range(self.n_sets)]
        self._fake = [Reservoir(max_samples, seed=self.seed * 2 + 1) for _ in range(self.n_sets)]

    def _add(self, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
        for reservoir, feats in zip(self._real + self._fake, real + fake, strict=True):
            reservoir.add(feats)

    def compute(self) -> MetricValue:
        """KID mean and std over subsets (``nan`` with a reason when unavailable)."""
        if not self.space.available:
            return self._unavailable()
        seen_r, seen_f = self._real[0].seen, self._fake[0].seen
        m = min(self.subset_size, seen_r, seen_f, self.max_samples)
        if m < 2:
            raise BenchError(f"kid: needs at least 2 real and 2 generated images, got {seen_r} and {seen_f}")
        n_r, n_f = min(seen_r, self.max_samples), min(seen_f, self.max_samples)
        rng = np.random.default_rng(self.seed)
        subsets = [
            (rng.choice(n_r, m, replace=False), rng.choice(n_f, m, replace=False)) for _ in range(self.n_subsets)
        ]
        # (n_sets, n_subsets): one MMD^2 per plane and subset, the same subsets in every plane.
        per_set = np.array([self._subset_values(r, f, subsets) for r, f in zip(self._real, self._fake, strict=True)])
        settings = self.settings(m)
        if not self.planes:
            values = per_set[0]
            return MetricValue(value=float(values.mean()), std=float(values.std()), n=self.n_fake, settings=settings,
                               counters=self._counters())  # fmt: skip
        components = {
            plane: self._component({**settings, "std": _PLANE_STD}, plane, float(values.mean()), float(values.std()))
            for plane, values in zip(self.planes, per_set, strict=True)
        }
        plane_mean = per_set.mean(axis=0)  # per subset: the mean over planes
        return MetricValue(value=float(plane_mean.mean()), std=float(plane_mean.std()), n=self.n_fake,
                           settings=settings, components=components, counters=self._counters())  # fmt: skip

    def _subset_values(
        self, real_rows: Reservoir, fake_rows: Reservoir, subsets: list[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Unbiased MMD^2 of each ``(real indices, generated indices)`` subset of one feature set."""
        real = real_rows.rows().astype(np.float64)
        fake = fake_rows.rows().astype(np.float64)
        n_r = len(real)
        total = n_r + len(fake)
        m = len(subsets[0][0])
        if total * total * 8 <= _GRAM_BYTES and total * total < 3 * len(subsets) * m * m:
            both = np.concatenate([real, fake])
            gram = polynomial_kernel(both, both)
            values = [
                mmd2_unbiased(gram[np.ix_(r, r)], gram[np.ix_(f + n_r, f + n_r)], gram[np.ix_(r, f + n_r)])
                for r, f in subsets
            ]
        else:
            values = []
            for r, f in subsets:
                x, y = real[r], fake[f]
                values.append(mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)))
        return np.array(values)

    def reset(self) -> None:
        """Forget kept features and counts."""
        for reservoir in self._real + self._fake:
            reservoir.reset()
        self._reset_counts()

    def settings(self, used_subset_size: int | None = None) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        seen_r, seen_f = self._real[0].seen, self._fake[0].seen
        if used_subset_size is None:
            used_subset_size = min(self.subset_size, seen_r, seen_f, self.max_samples)
        settings = {
            **self._common_settings(),
            "kernel": "polynomial (x.y / d + 1)^3",
            "estimator": "unbiased MMD^2, mean and population std over subsets",
            "subset_size": self.subset_size,
            "subset_size_used": used_subset_size,
            "n_subsets": self.n_subsets,
            "seed": self.seed,
            "max_samples": self.max_samples,
            "features_kept": [min(seen_r, self.max_samples), min(seen_f, self.max_samples)],  # per plane in 3D
            "sampling": "reservoir (seeded) beyond max_samples; subsets without replacement via numpy default_rng",
        }
        if used_subset_size < self.subset_size:
            settings["warning"] = (
                f"only {used_subset_size} feature vectors per subset (asked {self.subset_size}): KID has a high "
                "variance at small sample counts; compare values only at equal n"
            )
        if self.planes:
            settings["std"] = (
                "population std over subsets of the plane-mean MMD^2 (subset s draws the same volumes in every "
                "plane); max_samples and features_kept are per plane"
            )
        return settings


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`KID`."""
    return [KID]
