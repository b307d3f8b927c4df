"""Frechet distance at 2048 dimensions: symmetric eigendecompositions vs pytorch-fid's sqrtm.

Timing is ``bench_core.timing``'s: ``benchmark_throughput`` for the distance alone
(``extra_info["distances_per_s"]``), one ``ThroughputMeter`` interval per implementation for the
comparison (the sqrtm takes about 20 s, so each runs once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from bench_core.timing import ThroughputMeter, Timing, benchmark_throughput
from bench_plugins.metrics.fid import frechet_distance


def _stats(dim: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) @ (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim)))
    return x.mean(0), np.cov(x, rowvar=False)


def _seconds_of_one_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, str]:
    """``fn(*args)``, its wall-clock seconds and the timing protocol (NumPy work: nothing to synchronise)."""
    meter = ThroughputMeter("cpu", skip_first=0)
    with meter.measure(1):
        result = fn(*args)
    return result, meter.seconds, meter.protocol


@pytest.mark.benchmark(group="frechet")
def test_eigh_frechet_2048(benchmark):
    dim = 2048 if not benchmark.disabled else 256  # the default (disabled) run only checks it works
    (mu1, s1), (mu2, s2) = _stats(dim, dim + 512, 0), _stats(dim, dim + 512, 1)
    values: list[float] = []
    benchmark_throughput(
        benchmark, lambda: values.append(frechet_distance(mu1, s1, mu2, s2)[0]),
        items=1, timing=Timing("cpu"), unit="distances", dims=dim,
    )  # fmt: skip
    assert np.isfinite(values[-1])


def test_eigh_is_5x_faster_than_sqrtm_and_equal(benchmark):
    if benchmark.disabled:
        pytest.skip("the 2048-d comparison (about 20 s of sqrtm) runs with --benchmark-enable")
    (mu1, s1), (mu2, s2) = _stats(2048, 2560, 0), _stats(2048, 2560, 1)
    (ours, _), t_eigh, protocol = _seconds_of_one_call(frechet_distance, mu1, s1, mu2, s2)
    reference, t_sqrtm, _ = _seconds_of_one_call(calculate_frechet_distance, mu1, s1, mu2, s2)
    benchmark.extra_info.update(
        eigh_s=t_eigh, sqrtm_s=t_sqrtm, speedup=t_sqrtm / t_eigh, dims=2048, timing_protocol=protocol
    )
    print(f"frechet 2048-d: eigh {t_eigh:.2f} s, pytorch-fid sqrtm {t_sqrtm:.2f} s, {t_sqrtm / t_eigh:.1f}x")
    assert ours == pytest.approx(reference, rel=1e-6)
    assert t_sqrtm >= 5 * t_eigh
