"""The ``mae`` metric plugin: mean absolute error, one value per image (2D) or volume (3D).

A metric plugin follows the update / compute / reset shape of torchmetrics. The engine
maps predictions and targets from the dataset's value range to ``[0, 1]`` before calling
``update`` and builds every metric with ``data_range=1``, so on a leaderboard an MAE of
0.05 means "5 % of the data range" on every dataset.

A per-item paired metric needs only its formula: :class:`bench_core.metricbase.PairedMetric`
checks the options, the shapes and the range of every batch (NaN, Inf or values outside
``[0, data_range]`` are errors naming the metric), keeps the per-item values, and computes
their mean and population std with the settings every paired metric shares.
"""

from __future__ import annotations

from typing import Any

import torch

from bench_core.hookspecs import hookimpl
from bench_core.metricbase import PairedMetric


class MAE(PairedMetric):
    """Per-item mean absolute error, reported as mean and population std over all items seen.

    ``MAE(pred, target) = mean(|pred - target|)`` over the channels and pixels (voxels) of
    each item, computed in float64, in the units of the inputs (fractions of ``data_range``
    when the engine calls it). Lower is better; identical items score 0.
    """

    name = "mae"
    version = "1.0"
    api_version = 1
    higher_is_better = False
    # kind = "paired" and dims = {2, 3} come from PairedMetric: each prediction is compared
    # with its own target and update() returns the per-item values (stored per file);
    # paired metrics are not run on the `sample` task, whose outputs have no partner.

    def per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The MAE of each item of a checked batch (float64: a float32 mean over a volume loses digits)."""
        return (pred.double() - target.double()).abs().flatten(1).mean(dim=1)

    def settings(self) -> dict[str, Any]:
        """The shared settings (data_range, dims, std, out_of_range...) and how the value is reduced.

        Values whose settings differ are never ranked in one column, so anything that
        changes the number (a range, a window, a weighting) belongs here.
        """
        return {
            **super().settings(),
            "reduction": "mean |pred - target| over the channels and voxels of each item, then mean over items",
            "precision": "float64",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`MAE`."""
    return [MAE]
