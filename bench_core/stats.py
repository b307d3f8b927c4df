"""Interval estimates and paired tests for the report.

A seeded percentile bootstrap of a mean, interval overlap, the Wilcoxon signed-rank test of
two paired samples (scipy) and Holm's step-down correction of a family of p-values.

The bootstrap is deterministic: the resampling indices depend only on the sample size, the
number of resamples and a fixed seed, so rebuilding a report from the same store gives the
same intervals, byte for byte. Indices are cached per sample size because a report needs
thousands of intervals over a handful of sizes (test-set size, number of seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

N_BOOT = 2000
CONFIDENCE = 0.95
SEED = 0
# Resampling index matrices larger than this (elements) are drawn in chunks and not cached,
# so a test set of many thousand items cannot pin hundreds of megabytes.
_CACHE_LIMIT = 4_000_000
_CHUNK = 1_000_000


@lru_cache(maxsize=16)
def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n), dtype=np.int32)


def bootstrap_means(values: Sequence[float], n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """The means of ``n_boot`` resamples (with replacement) of ``values``, seeded."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n * n_boot <= _CACHE_LIMIT:
        return x[_indices(n, n_boot, seed)].mean(axis=1)
    # Same draws as the cached path (one generator, rows in order), only produced in chunks.
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n), dtype=np.int32)].mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap ``confidence`` interval of the mean of ``values``.

    Returns ``None`` when there are fewer than two finite values: one number has no spread
    to resample, and a NaN would poison every resample.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    means = bootstrap_means(finite, n_boot, seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share at least one point."""
    return a[0] <= b[1] and b[0] <= a[1]


SIGNIFICANCE = 0.05
"""Level below which a Holm-corrected paired test calls two models different."""


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, int] | None:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired ``a`` and ``b``, and the pair count.

    Pairs with a non-finite side are dropped; zero differences are dropped too (Wilcoxon's
    convention). ``None`` when fewer than two pairs remain to test; identical samples (every
    difference zero) are not different: p = 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return None
    differences = np.array([x - y for x, y in pairs])
    if not differences.any():
        return 1.0, len(pairs)
    from scipy.stats import wilcoxon  # scipy is imported by the report only, and only when there is a test

    return float(wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue), len(pairs)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (each capped at 1, never below an earlier one)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
