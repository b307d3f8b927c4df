"""The public base for per-item paired metrics (#19.8) and the conformance kit's check of `dims`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench_core.api import BenchError
from bench_core.metricbase import PairedMetric
from bench_core.testing import check_metric_plugin


class NRMSE(PairedMetric):
    """RMSE of each item over the data range (the guide's example, whole)."""

    name = "nrmse"
    version = "1.0"
    higher_is_better = False

    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).double().square().flatten(1).mean(1).sqrt() / self.data_range


def _pair(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand((n, 2, 8, 8), generator=g)
    return (target + 0.2 * torch.rand((n, 2, 8, 8), generator=g)).clamp(0, 1), target


def test_nrmse_on_the_base_matches_numpy_and_passes_the_conformance_kit():
    pred, target = _pair()
    metric = NRMSE(data_range=1.0)
    per_item = metric.update(pred[:2], target[:2]).tolist() + metric.update(pred[2:], target[2:]).tolist()
    diff = pred.numpy().astype(np.float64) - target.numpy().astype(np.float64)
    expected = np.sqrt((diff**2).reshape(5, -1).mean(1))
    np.testing.assert_allclose(per_item, expected, rtol=1e-12)
    value = metric.compute()
    assert value.value == pytest.approx(expected.mean(), rel=1e-12) and value.std == pytest.approx(expected.std())
    assert value.n == 5 and value.per_item == pytest.approx(list(expected))
    assert value.settings["data_range"] == 1.0 and value.settings["dims"] == 2
    assert value.counters == {"clamped_values": 0}
    assert NRMSE.kind == "paired" and NRMSE.dims == frozenset({2, 3})
    check_metric_plugin(NRMSE)
    check_metric_plugin(NRMSE, dims=3)


def test_bad_inputs_are_errors_naming_the_metric():
    pred, target = _pair()
    with pytest.raises(BenchError, match=r"^nrmse: pred and target shapes differ"):
        NRMSE().update(pred, target[:, :1])
    with pytest.raises(BenchError, match=r"^nrmse: pred contains NaN or Inf values"):
        NRMSE().update(torch.full_like(pred, float("nan")), target)
    with pytest.raises(BenchError, match=r"^nrmse: target values lie in \[2, 2\], outside the declared range \[0, 1\]"):
        NRMSE().update(pred, target * 0 + 2)
    with pytest.raises(BenchError, match=r"^nrmse: data_range must be a positive finite number, got 0"):
        NRMSE(data_range=0)
    with pytest.raises(BenchError, match=r"^nrmse: dims must be one of \[2, 3\], got 4"):
        NRMSE(dims=4)
    with pytest.raises(BenchError, match=r"^nrmse: no samples seen"):
        NRMSE().compute()
    clamping = NRMSE(out_of_range="clamp")
    clamping.update(pred, target * 0 + 2)
    assert clamping.compute().counters == {"clamped_values": target.numel()}


def test_per_item_must_return_one_value_per_item():
    class Whole(NRMSE):
        def per_item(self, pred, target):
            return (pred - target).abs().mean()

    with pytest.raises(BenchError, match=r"^nrmse: per_item must return one value per item, shape \(5,\); got \(\)"):
        Whole().update(*_pair())


def test_the_conformance_kit_fails_a_metric_that_sets_dims_on_the_instance():
    class Shadowing(NRMSE):
        def __init__(self, data_range: float = 1.0, dims: int = 2) -> None:
            super().__init__(data_range, dims)
            self.dims = dims  # the mistake: hides the class attribute the engine reads

    with pytest.raises(AssertionError, match="nrmse: sets self.dims on the instance"):
        check_metric_plugin(Shadowing)
