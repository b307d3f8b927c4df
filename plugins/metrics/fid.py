"""Fréchet Inception Distance with pytorch-fid's network, preprocessing and formula, streamed.

Features come from :mod:`.inception` (pytorch-fid's FID InceptionV3, pool3 by default, inputs
resized to 299x299 bilinear; weights looked up offline, never downloaded). Each set (real =
targets, generated = predictions) is summarised by running float64 sums of ``x`` and
``x xᵀ`` of features shifted by the set's first feature vector (the shift leaves the
covariance unchanged and avoids the cancellation of ``E[xxᵀ] - μμᵀ`` when features have a
large mean), so memory is ``O(d²)`` whatever the number of images. The covariance is the
unbiased one (``n - 1``), as ``numpy.cov`` in pytorch-fid.

The distance is ``pytorch_fid.fid_score.calculate_frechet_distance``'s: ``‖μ₁-μ₂‖² + Tr(Σ₁ +
Σ₂ - 2 sqrtm(Σ₁Σ₂))`` with ``scipy.linalg.sqrtm``, retried with ``1e-6`` added to both
diagonals when the square root is not finite, and the imaginary part dropped when small.
When it is not small, the value is reported unavailable with the reason instead of raising,
so one degenerate cell does not abort an evaluation run.

FID is biased upward at small sample counts (and the 2048-d covariance is rank deficient below
2048 samples): values are only comparable at equal ``n``; the settings record ``n_real``,
``n_fake`` and a warning below 2048. On one CPU thread ``sqrtm`` of a 2048x2048 matrix takes
~18 s.

3D volumes ("2.5D FID"): the three orthogonal centre slices of each volume are passed through
the 2D network and pooled into one feature set per side (3 features per volume).

Without weights the metric is *unavailable*: ``compute()`` returns ``value = nan`` and
``settings["status"] = "unavailable"`` with the searched paths in ``settings["reason"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from .inception import InceptionMetricBase

SQRTM_EPS = 1e-6
RECOMMENDED_N = 2048


class FrechetError(BenchError):
    """The matrix square root of the covariance product has a large imaginary part."""


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = SQRTM_EPS
) -> tuple[float, bool]:
    """``pytorch_fid.fid_score.calculate_frechet_distance`` without its print; also says if eps was added.

    Returns ``(distance, regularised)``. Raises :class:`FrechetError` where pytorch-fid raises
    ``ValueError('Imaginary component ...')``.
    """
    diff = mu1 - mu2
    # disp=False (pytorch-fid's call) is deprecated since SciPy 1.17 and returns the same matrix.
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    regularised = not np.isfinite(covmean).all()
    if regularised:
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FrechetError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    value = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(value), regularised


class GaussianStats:
    """Running mean and covariance of feature vectors in float64, from shifted sums."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        """Forget everything added."""
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(self.dim)
        self.outer = np.zeros((self.dim, self.dim))

    def add(self, feats: np.ndarray) -> None:
        """Accumulate ``(n, dim)`` features."""
        x = feats.astype(np.float64)
        if self.shift is None:
            self.shift = x[0].copy()  # the first vector: independent of how the stream is batched
        x = x - self.shift
        self.n += len(x)
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (``numpy.cov(rowvar=False)``); needs ``n >= 2``."""
        assert self.shift is not None and self.n >= 2
        centred_mean = self.sum / self.n
        cov = (self.outer - self.n * np.outer(centred_mean, centred_mean)) / (self.n - 1)
        return self.shift + centred_mean, cov


class FID(InceptionMetricBase):
    """Fréchet Inception Distance between predictions (generated) and targets (real).

    Options: ``data_range``, ``dims`` (2, or 3 for 2.5D slices), ``weights`` (path to
    ``pt_inception-2015-12-05-6726825d.pth``; default: ``$BENCH_FID_WEIGHTS``, then the torch hub
    cache; ``"random:SEED"`` for tests only), ``feature_dims`` (2048 pool3 as standard; 64, 192
    or 768 for pytorch-fid's earlier blocks, like its ``--dims``), ``out_of_range``.
    """

    name = "fid"
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
        out_of_range: str = "error",
    ) -> None:
        super().__init__(data_range, dims, weights, feature_dims, out_of_range)
        self._real = GaussianStats(feature_dims)
        self._fake = GaussianStats(feature_dims)
        self._regularised = False

    def _add(self, real: np.ndarray, fake: np.ndarray) -> None:
        self._real.add(real)
        self._fake.add(fake)

    def compute(self) -> MetricValue:
        """FID of everything seen since reset (``nan`` with a reason when unavailable)."""
        if not self.source.available:
            return self._unavailable()
        if min(self._real.n, self._fake.n) < 2:
            raise BenchError(
                f"fid: needs at least 2 real and 2 generated feature vectors, got {self._real.n} and {self._fake.n}"
            )
        mu_r, sigma_r = self._real.mean_cov()
        mu_f, sigma_f = self._fake.mean_cov()
        try:
            value, self._regularised = frechet_distance(mu_f, sigma_f, mu_r, sigma_r)
        except FrechetError as err:
            return self._unavailable(
                f"FID undefined here: {err} (n_real={self.n_real}, n_fake={self.n_fake}; "
                f"{RECOMMENDED_N}+ samples per side avoid this)"
            )
        return MetricValue(value=value, std=None, n=self.n_fake, settings=self.settings())

    def reset(self) -> None:
        """Forget accumulated statistics and counts."""
        self._real.reset()
        self._fake.reset()
        self._regularised = False
        self._reset_counts()

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        settings = {
            **self._common_settings(),
            "statistics": "float64 running sums of shifted features; unbiased covariance (n - 1), as numpy.cov",
            "distance": "pytorch-fid calculate_frechet_distance (scipy.linalg.sqrtm)",
            "sqrtm_eps_added": SQRTM_EPS if self._regularised else 0.0,
        }
        n = min(self.n_real, self.n_fake)
        if n < RECOMMENDED_N:
            settings["warning"] = (
                f"FID is biased upward at small sample counts (n_real={self.n_real}, n_fake={self.n_fake} < "
                f"{RECOMMENDED_N}); compare values only at equal n"
            )
        return settings


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`FID`."""
    return [FID]
