"""A public base for per-item paired metrics, and the checks it is made of.

A paired metric compares each prediction with its target and reports the mean and spread of
one value per item (PSNR, SSIM, MAE, NRMSE...). :class:`PairedMetric` does everything but the
per-item formula: it validates ``data_range``, ``dims`` and ``out_of_range``, checks each
batch's shapes and range (NaN and Inf always an error; values outside ``[0, data_range]`` an
error, or clamped and counted), accumulates the per-item values, computes the mean and
population std with the per-item values kept, and reports the shared settings. A plugin sets
its class attributes and implements ``per_item``::

    class NRMSE(PairedMetric):
        '''RMSE of each item over the data range.'''

        name = "nrmse"
        version = "1.0"
        higher_is_better = False

        def per_item(self, pred, target):
            return (pred - target).double().square().flatten(1).mean(1).sqrt() / self.data_range

The helpers (:func:`check_options`, :func:`check_shapes`, :func:`check_range`,
:class:`PerItemAccumulator`) serve metrics that need another shape of class.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from bench_core.api import API_VERSION, BenchError, MetricValue

RANGE_TOLERANCE = 1e-6
"""Excursions beyond ``[0, data_range]`` up to this fraction of ``data_range`` are accepted as
rounding noise (a float32 image rescaled to ``[0, 1]`` can land a few ulps outside)."""

OUT_OF_RANGE_POLICIES = ("error", "clamp")

STD_KIND = "population (ddof=0)"
"""How ``MetricValue.std`` is computed; recorded in every metric's settings."""


def check_options(metric: str, data_range: float, dims: int, allowed_dims: frozenset[int]) -> None:
    """Raise :class:`BenchError` unless ``data_range`` is positive and finite and ``dims`` allowed."""
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise BenchError(f"{metric}: data_range must be a positive finite number, got {data_range!r}")
    if dims not in allowed_dims:
        raise BenchError(f"{metric}: dims must be one of {sorted(allowed_dims)}, got {dims!r}")


def check_shapes(metric: str, pred: torch.Tensor, target: torch.Tensor, dims: int) -> None:
    """Raise :class:`BenchError` unless both are float tensors of one shape ``(N, C, *spatial)``."""
    if pred.shape != target.shape:
        raise BenchError(
            f"{metric}: pred and target shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}"
        )
    if pred.dim() != dims + 2:
        layout = "(N, C, H, W)" if dims == 2 else "(N, C, D, H, W)"
        raise BenchError(f"{metric}: expected {layout} tensors for dims={dims}, got shape {tuple(pred.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise BenchError(f"{metric}: inputs must be float tensors, got {pred.dtype} and {target.dtype}")
    if pred.numel() == 0:
        raise BenchError(f"{metric}: empty input of shape {tuple(pred.shape)}")


def check_range(metric: str, name: str, x: torch.Tensor, data_range: float, policy: str) -> tuple[torch.Tensor, int]:
    """Validate one input against ``[0, data_range]``; return it (clamped if allowed) and the clamp count.

    NaN and Inf always raise. Values beyond the tolerance raise under ``policy="error"``;
    under ``"clamp"`` the tensor is clamped to ``[0, data_range]`` and the number of values
    that were beyond the tolerance is returned.
    """
    # One fused pass: min/max propagate NaN and expose +-Inf, so no separate isfinite pass.
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise BenchError(f"{metric}: {name} contains NaN or Inf values (observed min {lo}, max {hi})")
    tol = RANGE_TOLERANCE * data_range
    if lo >= -tol and hi <= data_range + tol:
        return x, 0
    if policy == "error":
        raise BenchError(
            f"{metric}: {name} values lie in [{lo:.6g}, {hi:.6g}], outside the declared range "
            f"[0, {data_range:g}] (out_of_range='error'; rescale the inputs or use out_of_range='clamp')"
        )
    n_out = int(((x < -tol) | (x > data_range + tol)).sum())
    return x.clamp(0.0, data_range), n_out


class PerItemAccumulator:
    """Collects per-item values across ``update`` calls and summarises them as a MetricValue."""

    def __init__(self, metric: str) -> None:
        self._metric = metric
        self._values: list[float] = []

    def add(self, values: torch.Tensor) -> None:
        """Append a 1D tensor of per-item values."""
        self._values.extend(values.detach().double().cpu().tolist())

    def reset(self) -> None:
        """Forget every value seen."""
        self._values = []

    def summary(self, settings: dict, counters: dict[str, float] | None = None) -> MetricValue:
        """Mean and population std of the values seen, with ``settings`` and ``counters``; BenchError if none."""
        n = len(self._values)
        if n == 0:
            raise BenchError(f"{self._metric}: no samples seen; call update() before compute()")
        mean = math.fsum(self._values) / n
        var = math.fsum((v - mean) ** 2 for v in self._values) / n
        return MetricValue(value=mean, std=math.sqrt(var), n=n, settings=settings, per_item=list(self._values),
                           counters=dict(counters or {}))  # fmt: skip


class PairedMetric(ABC):
    """Base of per-item paired metrics: checks, accumulation, settings and per-item values.

    Validates the common options, checks shapes and ranges on each update, accumulates the
    per-item values and counts clamped inputs (the value's ``counters["clamped_values"]``). A
    subclass sets ``name``, ``version`` and ``higher_is_better`` (``kind``, ``dims`` and
    ``api_version`` have defaults here), implements :meth:`per_item`, and may add its own
    options (an ``__init__`` calling this one) and entries to :meth:`settings`. The dims a
    metric was built for are ``spatial_dims``: ``dims`` stays the class attribute the engine reads.
    """

    kind: ClassVar[str] = "paired"
    dims: ClassVar[frozenset[int]] = frozenset({2, 3})
    api_version: ClassVar[int] = API_VERSION
    name: ClassVar[str]
    version: ClassVar[str]
    higher_is_better: ClassVar[bool | None]

    def __init__(self, data_range: float = 1.0, dims: int = 2, out_of_range: str = "error") -> None:
        check_options(self.name, data_range, dims, type(self).dims)
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise BenchError(f"{self.name}: out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}")
        self.data_range = float(data_range)
        # Not `self.dims`: that class attribute lists the supported dims for the registry.
        self.spatial_dims = dims
        self.out_of_range = out_of_range
        self._values = PerItemAccumulator(self.name)
        self._clamped = 0

    @abstractmethod
    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The metric of each item of a checked batch (shape ``(N,)``; ``nan`` where it is undefined)."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Score a batch; returns the per-item values (shape ``(N,)``, float64)."""
        check_shapes(self.name, pred, target, self.spatial_dims)
        pred, n_pred = check_range(self.name, "pred", pred, self.data_range, self.out_of_range)
        target, n_target = check_range(self.name, "target", target, self.data_range, self.out_of_range)
        values = self.per_item(pred, target)
        if not torch.is_tensor(values) or tuple(values.shape) != (pred.shape[0],):
            got = tuple(values.shape) if torch.is_tensor(values) else type(values).__name__
            expected = f"shape ({pred.shape[0]},)"
            raise BenchError(f"{self.name}: per_item must return one value per item, {expected}; got {got}")
        self._clamped += n_pred + n_target
        self._values.add(values)
        return values

    def compute(self) -> MetricValue:
        """Mean and population std of the per-item values over everything seen since reset."""
        return self._values.summary(self.settings(), {"clamped_values": self._clamped})

    def reset(self) -> None:
        """Forget accumulated values and the clamp count."""
        self._values.reset()
        self._clamped = 0

    def settings(self) -> dict[str, Any]:
        """The settings every paired metric shares; subclasses add theirs."""
        return {
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "std": STD_KIND,
            "out_of_range": self.out_of_range,
            "range_tolerance": RANGE_TOLERANCE * self.data_range,
        }
