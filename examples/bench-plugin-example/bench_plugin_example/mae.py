"""The ``mae`` metric plugin: mean absolute error, one value per image (2D) or volume (3D).

A metric plugin follows the update / compute / reset shape of torchmetrics. The engine
maps predictions and targets from the dataset's value range to ``[0, 1]`` before calling
``update`` and builds every metric with ``data_range=1``, so on a leaderboard an MAE of
0.05 means "5 % of the data range" on every dataset.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench_core.api import BenchError, MetricValue
from bench_core.hookspecs import hookimpl


class MAE:
    """Per-item mean absolute error, reported as mean and population std over all items seen.

    ``MAE(pred, target) = mean(|pred - target|)`` over the channels and pixels (voxels) of
    each item, computed in float64, in the units of the inputs (fractions of ``data_range``
    when the engine calls it). Lower is better; identical items score 0.
    """

    name = "mae"
    version = "1.0"
    api_version = 1
    higher_is_better = False
    # "paired": each prediction is compared with its own target, and update() returns the
    # per-item values (the engine stores them per file). Paired metrics are not run on
    # the `sample` task, whose outputs have no partner.
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(self, data_range: float = 1.0, dims: int = 2) -> None:
        if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
            raise BenchError(f"mae: data_range must be a positive finite number, got {data_range!r}")
        if dims not in type(self).dims:
            raise BenchError(f"mae: dims must be one of {sorted(type(self).dims)}, got {dims!r}")
        self.data_range = float(data_range)
        # Not `self.dims`: on the instance that would hide the class attribute listing the
        # supported dims, which the engine reads.
        self.spatial_dims = dims
        self._values: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Score a batch ``(N, C, *spatial)``; return the per-item MAE (shape ``(N,)``, float64)."""
        if pred.shape != target.shape:
            raise BenchError(f"mae: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.dim() != self.spatial_dims + 2:
            raise BenchError(f"mae: expected (N, C, *spatial) with {self.spatial_dims} spatial dims, got {pred.dim()}D")
        # float64: a float32 mean over a large volume loses digits the table shows.
        values = (pred.double() - target.double()).abs().flatten(1).mean(dim=1)
        self._values.append(values.detach().cpu())  # CPU: the state must not pin GPU memory
        return values

    def compute(self) -> MetricValue:
        """Mean and population std (ddof=0) of the per-item values since the last reset."""
        if not self._values:
            raise BenchError("mae: no items seen; call update() before compute()")
        values = torch.cat(self._values)
        return MetricValue(
            value=float(values.mean()),
            std=float(values.std(correction=0)),
            n=len(values),
            settings=self.settings(),
            per_item=values.tolist(),
        )

    def reset(self) -> None:
        """Forget every value seen."""
        self._values = []

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value; stored with it as provenance.

        Values whose settings differ are never ranked in one column, so anything that
        changes the number (a range, a window, a weighting) belongs here.
        """
        return {
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "reduction": "mean |pred - target| over the channels and voxels of each item, then mean over items",
            "precision": "float64",
            "std": "population (ddof=0)",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`MAE`."""
    return [MAE]
