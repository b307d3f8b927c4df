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
seeded reservoir sampling when more arrive (recorded in the settings). When the kernel matrix
of all kept features is cheaper than the per-subset kernels and fits in 512 MB, it is computed
once and indexed; both give the same numbers up to float64 rounding.

3D volumes: three orthogonal centre slices per volume, pooled (see :mod:`.fid`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from ._reduce import Reservoir
from .inception import InceptionMetricBase

_GRAM_BYTES = 512 * 1024 * 1024


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x yᵀ / d + 1)³`` in float64."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from the three ``m x m`` kernel matrices (diagonals of ``k_xx``, ``k_yy`` excluded)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


class KID(InceptionMetricBase):
    """Kernel Inception Distance between predictions (generated) and targets (real).

    Options: those of :class:`~.fid.FID` (``weights``, ``feature_dims``, ``out_of_range``) plus
    ``subset_size`` (1000), ``n_subsets`` (100), ``seed`` (0, subset and reservoir sampling)
    and ``max_samples`` (10 000 feature vectors kept per side).
    """

    name = "kid"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = False
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
    ) -> None:
        for option, value in (("subset_size", subset_size), ("n_subsets", n_subsets), ("max_samples", max_samples)):
            if not (isinstance(value, int) and value >= 1):
                raise BenchError(f"kid: {option} must be a positive integer, got {value!r}")
        super().__init__(data_range, dims, weights, feature_dims, out_of_range)
        self.subset_size = subset_size
        self.n_subsets = n_subsets
        self.seed = int(seed)
        self.max_samples = max_samples
        # Different seeds for the two reservoirs: the same seed would replace the same slots.
        self._real = Reservoir(max_samples, seed=self.seed * 2)
        self._fake = Reservoir(max_samples, seed=self.seed * 2 + 1)

    def _add(self, real: np.ndarray, fake: np.ndarray) -> None:
        self._real.add(real)
        self._fake.add(fake)

    def compute(self) -> MetricValue:
        """KID mean and std over subsets (``nan`` with a reason when unavailable)."""
        if not self.source.available:
            return self._unavailable()
        m = min(self.subset_size, self._real.seen, self._fake.seen, self.max_samples)
        if m < 2:
            raise BenchError(
                f"kid: needs at least 2 real and 2 generated feature vectors, got {self._real.seen} "
                f"and {self._fake.seen}"
            )
        real = self._real.rows().astype(np.float64)
        fake = self._fake.rows().astype(np.float64)
        n_r, n_f = len(real), len(fake)
        rng = np.random.default_rng(self.seed)
        subsets = [
            (rng.choice(n_r, m, replace=False), rng.choice(n_f, m, replace=False)) for _ in range(self.n_subsets)
        ]
        total = n_r + n_f
        if total * total * 8 <= _GRAM_BYTES and total * total < 3 * self.n_subsets * m * m:
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
        arr = np.array(values)
        return MetricValue(value=float(arr.mean()), std=float(arr.std()), n=self.n_fake, settings=self.settings(m))

    def reset(self) -> None:
        """Forget kept features and counts."""
        self._real.reset()
        self._fake.reset()
        self._reset_counts()

    def settings(self, used_subset_size: int | None = None) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        if used_subset_size is None:
            used_subset_size = min(self.subset_size, self._real.seen, self._fake.seen, self.max_samples)
        settings = {
            **self._common_settings(),
            "kernel": "polynomial (x.y / d + 1)^3",
            "estimator": "unbiased MMD^2, mean and population std over subsets",
            "subset_size": self.subset_size,
            "subset_size_used": used_subset_size,
            "n_subsets": self.n_subsets,
            "seed": self.seed,
            "max_samples": self.max_samples,
            "features_kept": [min(self._real.seen, self.max_samples), min(self._fake.seen, self.max_samples)],
            "sampling": "reservoir (seeded) beyond max_samples; subsets without replacement via numpy default_rng",
        }
        if used_subset_size < self.subset_size:
            settings["warning"] = (
                f"only {used_subset_size} feature vectors per subset (asked {self.subset_size}): KID has a high "
                "variance at small sample counts; compare values only at equal n"
            )
        return settings


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`KID`."""
    return [KID]
