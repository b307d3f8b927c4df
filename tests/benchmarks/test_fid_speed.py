"""Frechet distance at 2048 dimensions: symmetric eigendecompositions vs pytorch-fid's sqrtm."""

import time

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from bench_plugins.metrics.fid import frechet_distance


def _stats(dim: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) @ (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim)))
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.benchmark(group="frechet")
def test_eigh_frechet_2048(benchmark):
    dim = 2048 if not benchmark.disabled else 256  # the default (disabled) run only checks it works
    (mu1, s1), (mu2, s2) = _stats(dim, dim + 512, 0), _stats(dim, dim + 512, 1)
    value, _ = benchmark(frechet_distance, mu1, s1, mu2, s2)
    assert np.isfinite(value)
    benchmark.extra_info.update(dims=dim)


def test_eigh_is_5x_faster_than_sqrtm_and_equal(benchmark):
    if benchmark.disabled:
        pytest.skip("the 2048-d comparison (about 20 s of sqrtm) runs with --benchmark-enable")
    (mu1, s1), (mu2, s2) = _stats(2048, 2560, 0), _stats(2048, 2560, 1)
    t0 = time.perf_counter()
    ours, _ = frechet_distance(mu1, s1, mu2, s2)
    t_eigh = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = calculate_frechet_distance(mu1, s1, mu2, s2)
    t_sqrtm = time.perf_counter() - t0
    benchmark.extra_info.update(eigh_s=t_eigh, sqrtm_s=t_sqrtm, speedup=t_sqrtm / t_eigh)
    print(f"frechet 2048-d: eigh {t_eigh:.2f} s, pytorch-fid sqrtm {t_sqrtm:.2f} s, {t_sqrtm / t_eigh:.1f}x")
    assert ours == pytest.approx(reference, rel=1e-6)
    assert t_sqrtm >= 5 * t_eigh
