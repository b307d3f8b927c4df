"""Memorisation of the training set by generated samples: copies, authenticity (Alaa et al.), C_T (Meehan et al.).

The first question asked of synthetic medical images is whether they copy training patients.
These metrics compare each generated sample with the **training** split, in a feature space of
:mod:`.features` (Inception pool3 by default, or the weight-free pyramid descriptors). They
declare ``needs_train = True``: the engine then streams the training split's images into
``update_train(images, ids)`` (sample tasks only; see docs/plugins.md), and their features go
through the same caches as the test split's (Inception: on disk, keyed by content).

For every generated sample ``g``: ``d(g)``, the distance to its nearest training item ``t(g)``.
For every training item ``t``: ``d_T(t)``, the distance to its nearest *other* training item.

- ``copies`` (lower is better): the fraction of samples with ``d(g) <= q``, ``q`` the
  ``percentile``-th percentile (default 1, numpy's linear interpolation) of the training items'
  ``d_T``: a sample closer to a training image than 99% of the training images are to each
  other is a copy. ``<=``, not ``<``: when the training set holds duplicates ``q`` is 0 and exact
  copies still count. Per-item values: ``d(g) / q`` (at most 1 for a copy; ``inf`` if ``q = 0``
  and ``d(g) > 0``).
- ``authenticity`` (higher is better): Alaa et al. 2022 ("How faithful is your synthetic
  data?"): a sample is authentic when ``d(g) > d_T(t(g))``, farther from its nearest training
  item than that item is from its own nearest neighbour; the value is the authentic fraction,
  per-item values 1 (authentic) or 0. This is the paper's definition per generated sample
  (synthcity's code instead indexes the real items' distances by generated indices).
- ``data-copying`` (not ranked): Meehan et al. 2020's ``C_T`` statistic, as dgm-eval (Stein et
  al. 2023) runs it. Features are projected on the training set's first ``pca_dims`` (64)
  principal axes (when wider); k-means (``cells`` = 3, k-means++ initialisation, 10 restarts,
  seeded) fitted on the training set partitions the space. In each cell, the distances of the
  held-out *test* items and of the samples to their nearest training item of the cell are
  compared by the Mann-Whitney U statistic of (samples, test), z-scored under the null as the
  reference code does, ``Z = (U - (m n / 2 - 0.5)) / sqrt(m n (m + n + 1) / 12)``; ``C_T`` is the
  mean of ``Z`` over the cells holding more than ``tau`` (default ``20 / m``) of the samples,
  weighted by the cells' share of test items. ``C_T << 0``: samples sit closer to the training
  data than fresh data does (copying); ``>> 0``: farther (underfitting); near 0 is the ideal,
  hence no ranking direction. Its settings also list the ``closest_pairs`` (default 8) closest
  sample/training pairs (generated index, training item id, both distances) and the copy
  threshold ``q``, the evidence a reader checks by eye; the engine saves sample ``j`` of the
  sample task as ``sample/sample_{j:05d}.png``. Data-dependent entries live only here, in an
  unranked metric, so they never make the ranked columns "not comparable".

Per generated sample, each metric also returns its nearest training item's id and position among
the training items fed (``train_index``), the distance ``d(g)`` and that item's ``d_T``
(:attr:`MetricValue.item_details`, per plane in 3D): the engine saves them in the cell's
``eval.json`` under ``samples``, keyed by the sample's image name, and the training images
nearest to the closest samples beside them, for the cell page.

Distances are exact (float64, :mod:`._knn`; memory bounded by ``chunk_size``, time
``O(n_train (n_train + m) d)``). 3D volumes are compared per plane of centre slices, each a
component ``name.<plane>``, the value their mean (see :mod:`.features`).

Without training items (``update_train`` never called) the metrics report themselves
*unavailable* with the reason, as FID without weights does.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import rankdata

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from . import _knn
from .features import FeatureMetricBase
from .prdc import check_features

NO_TRAIN = (
    "no training items were given (update_train was never called): memorisation compares samples with the "
    "training split, which bench run feeds to the sample task's metrics"
)


def check_percentile(metric: str, percentile: object) -> float:
    """``percentile`` as a float if it is a number in ``[0, 100]``, else a :class:`BenchError`."""
    if isinstance(percentile, bool) or not (isinstance(percentile, (int, float)) and 0 <= percentile <= 100):
        raise BenchError(f"{metric}: percentile must be a number in [0, 100], got {percentile!r}")
    return float(percentile)


class TrainingSetMetric(FeatureMetricBase):
    """Shared body of the memorisation metrics: training, test and generated features per set.

    Subclasses implement :meth:`_set_value` for one feature set (one plane in 3D).
    """

    needs_train: ClassVar[bool] = True
    kind = "distribution"
    dims = frozenset({2, 3})
    api_version = API_VERSION
    _uses_test: ClassVar[bool] = False  # only data-copying compares with the test split

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        features: str = "inception",
        weights: str | None = None,
        feature_dims: int = 2048,
        feature_cache: bool = True,
        chunk_size: int = _knn.DEFAULT_BLOCK,
        out_of_range: str = "error",
    ) -> None:
        super().__init__(data_range, dims, weights, feature_dims, out_of_range, feature_cache, features)
        self.chunk_size = _knn.check_block(chunk_size, self.name)
        self._sets: dict[str, list[list[np.ndarray]]] = {}
        self.train_ids: list[str] = []
        self.reset()

    def update_train(self, images: torch.Tensor, ids: Sequence[str]) -> None:
        """Add training items (``(N, C, *spatial)`` in ``[0, data_range]``) and their ids."""
        images = self._check("train", images)
        if len(ids) != len(images):
            raise BenchError(f"{self.name}: {len(images)} training images but {len(ids)} ids")
        self.train_ids.extend(str(i) for i in ids)
        if self.space.available:
            for kept, feats in zip(self._sets["train"], self._features(images, real=True), strict=True):
                kept.append(feats)

    def _add(self, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
        for kept, feats in zip(self._sets["fake"], fake, strict=True):
            kept.append(feats)
        if self._uses_test:
            for kept, feats in zip(self._sets["test"], real, strict=True):
                kept.append(feats)

    def compute(self) -> MetricValue:
        """The metric per feature set (plane mean in 3D); unavailable without weights or training items."""
        if not self.space.available:
            return self._unavailable()
        if not self.train_ids:
            return self._unavailable(NO_TRAIN)
        problem = self._too_few()
        if problem is not None:  # small splits cost this metric, not the cell's other numbers
            return self._unavailable(problem)
        settings = self.settings()
        values, per_item, details, nearest_items = [], [], [], []
        for i in range(self.n_sets):
            train, test, fake = (np.concatenate(kept[i]) if kept[i] else None for kept in self._sets.values())
            check_features(self.name, train=train, generated=fake, **({"test": test} if test is not None else {}))
            t, f = _knn.prepare(torch.from_numpy(train), torch.from_numpy(fake))
            nearest2, nearest_idx = _knn.nearest(f, t, self.chunk_size)
            ((train_nn2, _),) = _knn.kth_neighbours(t, (1,), self.chunk_size)
            nearest, train_nn = nearest2.sqrt(), train_nn2.sqrt()
            value, items, extra = self._set_value(nearest, nearest_idx, train_nn, (train, test, fake))
            values.append(value)
            per_item.append(items)
            details.append(extra)
            nearest_items.append(self._nearest_items(nearest, nearest_idx, train_nn))
        return self._per_plane(settings, values, details, per_item=per_item, item_details=nearest_items)

    def _nearest_items(
        self, nearest: torch.Tensor, nearest_idx: torch.Tensor, train_nn: torch.Tensor
    ) -> list[dict[str, Any]]:
        """Per generated item: the nearest training item's id and position (order fed), the distance, and its d_T."""
        return [
            {"train_id": self.train_ids[j], "train_index": j, "distance": d, "train_nn_distance": nn}
            for j, d, nn in zip(nearest_idx.tolist(), nearest.tolist(), train_nn[nearest_idx].tolist(), strict=True)
        ]

    def _too_few(self) -> str | None:
        """Why the items seen are too few for this metric, or None."""
        if len(self.train_ids) < 2 or self.n_fake < 1:
            return (
                f"{self.name}: needs at least 2 training items and 1 generated item, got "
                f"{len(self.train_ids)} and {self.n_fake}"
            )
        return None

    @abstractmethod
    def _set_value(
        self,
        nearest: torch.Tensor,
        nearest_idx: torch.Tensor,
        train_nn: torch.Tensor,
        feats: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    ) -> tuple[float, list[float] | None, dict[str, Any]]:
        """One set's value, per-item values and data-dependent settings.

        Args:
            nearest: per generated item, the distance to its nearest training item.
            nearest_idx: per generated item, that training item's index.
            train_nn: per training item, the distance to its nearest other training item.
            feats: the (training, test or None, generated) feature matrices.
        """

    def reset(self) -> None:
        """Forget every item: training, test and generated."""
        # In this order: compute() unpacks the three sides from the values.
        self._sets = {side: [[] for _ in range(self.n_sets)] for side in ("train", "test", "fake")}
        self.train_ids = []
        self._reset_counts()

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **self._common_settings(),
            "n_train": len(self.train_ids),
            "distances": "exact Euclidean between feature vectors (float64); nearest training item of each "
            "generated item, nearest other training item of each training item",
        }


class Copies(TrainingSetMetric):
    """Fraction of generated samples that are near-copies of a training item (module docstring).

    Options: ``percentile`` (1.0: the training items' nearest-neighbour distance below which a
    sample is a copy), ``chunk_size`` and the feature options of :class:`~.prdc.PRDC`.
    """

    name = "copies"
    version = "1.0"
    higher_is_better = False
    description = "Fraction of samples that are near-copies of a training item (below its nearest-neighbour distance)"
    headline = False

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        percentile: float = 1.0,
        features: str = "inception",
        weights: str | None = None,
        feature_dims: int = 2048,
        feature_cache: bool = True,
        chunk_size: int = _knn.DEFAULT_BLOCK,
        out_of_range: str = "error",
    ) -> None:
        self.percentile = check_percentile(self.name, percentile)
        super().__init__(data_range, dims, features, weights, feature_dims, feature_cache, chunk_size, out_of_range)

    def _set_value(self, nearest, nearest_idx, train_nn, feats):
        threshold = float(np.percentile(train_nn.numpy(), self.percentile))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(nearest.numpy() == 0, 0.0, nearest.numpy() / threshold)
        return float((nearest <= threshold).double().mean()), ratio.tolist(), {}

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **super().settings(),
            "percentile": self.percentile,
            "copy": f"a generated item at most the {self.percentile:g}th percentile of the training items' "
            "nearest-neighbour distances (numpy linear interpolation) from its nearest training item",
            "per_item": "distance to the nearest training item over that threshold",
        }


class Authenticity(TrainingSetMetric):
    """Alaa et al. 2022's authenticity: fraction of samples farther from their nearest training item than it
    is from its own nearest neighbour (module docstring). Options: ``chunk_size`` and the feature options of
    :class:`~.prdc.PRDC`.
    """

    name = "authenticity"
    version = "1.0"
    higher_is_better = True
    description = "Fraction of samples farther from their nearest training item than it is from its own neighbour"
    headline = False

    def _set_value(self, nearest, nearest_idx, train_nn, feats):
        authentic = (nearest > train_nn[nearest_idx]).double()
        return float(authentic.mean()), authentic.tolist(), {}

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **super().settings(),
            "authentic": "d(g, t) > d(t, nearest other training item), t the training item nearest to g "
            "(Alaa et al. 2022, per generated item)",
        }


def kmeans(x: torch.Tensor, k: int, seed: int, restarts: int = 10, iterations: int = 300) -> torch.Tensor:
    """Centroids ``(k, d)`` of float64 rows ``x``: k-means++ initialisation and Lloyd iterations, best of ``restarts``.

    Seeded (``torch.Generator``), so the cells are the same in every run; an empty cluster keeps
    its centroid.
    """
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = x[:k].clone(), math.inf
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=gen)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centres).square().min(dim=1).values
            weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
            centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=gen)]])
        for _ in range(iterations):
            labels = torch.cdist(x, centres).argmin(dim=1)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            done = torch.equal(moved, centres)
            centres = moved
            if done:
                break
        inertia = float(torch.cdist(x, centres).square().min(dim=1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def mann_whitney_z(generated: np.ndarray, test: np.ndarray) -> float:
    """Meehan et al.'s z-scored Mann-Whitney U of (generated, test) distances, ties counted 1/2."""
    m, n = len(generated), len(test)
    ranks = rankdata(np.concatenate([generated, test]))  # average ranks for ties
    u = ranks[:m].sum() - m * (m + 1) / 2.0
    return float((u - (m * n / 2.0 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12.0))


def ct_statistic(
    train: torch.Tensor,
    test: torch.Tensor,
    fake: torch.Tensor,
    cells: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_cells: int,
    tau: float,
    block: int = _knn.DEFAULT_BLOCK,
) -> tuple[float, list[dict[str, Any]]]:
    """``C_T`` from cell labels of the training, test and generated rows, and a summary per cell.

    Cells without test or training items are left out (Meehan et al.'s code raises instead);
    ``nan`` when no cell holds more than ``tau`` of the generated items.
    """
    t, p, q = _knn.prepare(train, test, fake)
    cell_t, cell_p, cell_q = cells
    m, n = len(q), len(p)
    summary, weighted, weights = [], 0.0, 0.0
    for c in range(n_cells):
        tc, pc, qc = t[cell_t == c], p[cell_p == c], q[cell_q == c]
        row: dict[str, Any] = {"cell": c, "n_train": len(tc), "n_test": len(pc), "n_generated": len(qc)}
        if len(tc) and len(pc) and len(qc):
            # Squared distances order as the distances do, and U depends on the order only.
            z = mann_whitney_z(_knn.nearest(qc, tc, block)[0].numpy(), _knn.nearest(pc, tc, block)[0].numpy())
            row["z_u"] = z
            row["in_statistic"] = len(qc) / m > tau
            if row["in_statistic"]:
                weighted += len(pc) / n * z
                weights += len(pc) / n
        else:
            row["in_statistic"] = False
        summary.append(row)
    return (weighted / weights if weights > 0 else float("nan")), summary


class DataCopying(TrainingSetMetric):
    """Meehan et al. 2020's C_T statistic, with the closest sample/training pairs (module docstring).

    Options: ``cells`` (3 k-means cells), ``pca_dims`` (64; 0 keeps the features as they are),
    ``tau`` (None: 20 / number of samples, as dgm-eval), ``seed`` (0, k-means),
    ``closest_pairs`` (8 pairs listed in the settings), ``percentile`` (1.0, the copy threshold
    reported with the pairs), ``chunk_size`` and the feature options of :class:`~.prdc.PRDC`.
    """

    name = "data-copying"
    version = "1.0"
    higher_is_better = None  # C_T ~ 0 is ideal: negative means copying, positive underfitting
    description = "Data-copying test statistic C_T (about 0 is ideal; negative: copying, positive: underfitting)"
    headline = False
    _uses_test = True

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        cells: int = 3,
        pca_dims: int = 64,
        tau: float | None = None,
        seed: int = 0,
        closest_pairs: int = 8,
        percentile: float = 1.0,
        features: str = "inception",
        weights: str | None = None,
        feature_dims: int = 2048,
        feature_cache: bool = True,
        chunk_size: int = _knn.DEFAULT_BLOCK,
        out_of_range: str = "error",
    ) -> None:
        for option, value, low in (("cells", cells, 1), ("pca_dims", pca_dims, 0), ("closest_pairs", closest_pairs, 0)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise BenchError(f"data-copying: {option} must be an integer >= {low}, got {value!r}")
        if tau is not None and not (isinstance(tau, (int, float)) and 0 <= tau < 1):
            raise BenchError(f"data-copying: tau must be a number in [0, 1) or null, got {tau!r}")
        self.cells, self.pca_dims, self.tau, self.seed = cells, pca_dims, tau, int(seed)
        self.closest_pairs = closest_pairs
        self.percentile = check_percentile(self.name, percentile)
        super().__init__(data_range, dims, features, weights, feature_dims, feature_cache, chunk_size, out_of_range)

    def _too_few(self) -> str | None:
        """Besides the shared minimum: a training item per cell and some test items."""
        if len(self.train_ids) < self.cells:
            n = len(self.train_ids)
            return f"data-copying: {self.cells} cells need at least {self.cells} training items, got {n}; lower cells"
        if not self.n_real:
            return "data-copying: needs test items (the targets of update) besides training items"
        return super()._too_few()

    def _project(self, train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
        """All sets on the training set's first ``pca_dims`` principal axes (unchanged when not wider)."""
        sets = [torch.from_numpy(s).to(torch.float64) for s in (train, *others)]
        if not self.pca_dims or sets[0].shape[1] <= self.pca_dims:
            return sets
        mean = sets[0].mean(dim=0)
        centred = sets[0] - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        axes = vectors[:, -self.pca_dims :]  # eigh sorts ascending: the last columns are the principal axes
        return [(s - mean) @ axes for s in sets]

    def _set_value(self, nearest, nearest_idx, train_nn, feats):
        train, test, fake = feats
        assert test is not None  # _too_few: update() gave test items
        t, p, q = self._project(train, test, fake)
        centres = kmeans(t, self.cells, self.seed)
        labels = tuple(torch.cdist(s, centres).argmin(dim=1) for s in (t, p, q))
        tau = 20.0 / len(q) if self.tau is None else self.tau
        value, cells = ct_statistic(t, p, q, labels, self.cells, tau, self.chunk_size)
        threshold = float(np.percentile(train_nn.numpy(), self.percentile))
        order = torch.argsort(nearest, stable=True)[: self.closest_pairs].tolist()
        pairs = [
            {"generated_index": j, "train_id": self.train_ids[int(nearest_idx[j])], "distance": float(nearest[j]),
             "train_nn_distance": float(train_nn[nearest_idx[j]]), "copy": bool(nearest[j] <= threshold)}
            for j in order
        ]  # fmt: skip
        details = {"tau_used": tau, "cells_detail": cells, "copy_threshold": threshold, "closest_pairs": pairs}
        if math.isnan(value):
            details["warning"] = f"no cell holds more than tau = {tau:.3g} of the {len(q)} generated items"
        return value, None, details

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""
        return {
            **super().settings(),
            "statistic": "C_T (Meehan et al. 2020): test-share-weighted mean over cells of the z-scored "
            "Mann-Whitney U of (generated, test) distances to the nearest training item of the cell",
            "cells": self.cells,
            "partition": "k-means on the training features (k-means++, 10 restarts, seeded)",
            "seed": self.seed,
            "pca_dims": self.pca_dims,
            "tau": "20 / n_generated" if self.tau is None else self.tau,
            "percentile": self.percentile,
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`Copies`, :class:`Authenticity` and :class:`DataCopying`."""
    return [Copies, Authenticity, DataCopying]
