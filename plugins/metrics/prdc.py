"""Improved precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

FID and KID fold fidelity and diversity into one number; these separate them, on k-nearest-neighbour
"manifolds" of the real and of the generated features (the feature spaces of :mod:`.features`:
Inception pool3 by default, or the weight-free pyramid descriptors). With ``NN_k(x)`` the distance
from ``x`` to its k-th nearest other item of its own set:

- precision: the fraction of generated items inside some real ball, ``d(g, r) <= NN_k(r)``;
- recall: the fraction of real items inside some generated ball, ``d(r, g) <= NN_k(g)``
  (both at ``k_pr = 3``, and with ``<=``, as Kynkäänniemi et al.'s code and torch-fidelity);
- density: ``1 / (k m) Σ_g #{r : d(g, r) < NN_k(r)}``, how many real balls hold each
  generated item on average over ``k`` (1 when the two sets are alike; above 1 when samples
  crowd in dense real regions);
- coverage: the fraction of real items whose ball holds some generated item,
  ``min_g d(r, g) < NN_k(r)`` (both at ``k_dc = 5`` and with ``<``, as Naeem et al.'s ``prdc``).

The value is the F-score of precision and recall, ``2 P R / (P + R)`` (torch-fidelity's
``f_score``; 0 when both are 0); the four quantities are components (rows ``prdc.precision``,
``prdc.recall``, ``prdc.density``, ``prdc.coverage``), each with its per-item values (per
generated item for precision and density, per real item for recall and coverage). All are
higher-is-better. They depend on ``n`` (larger sets give tighter balls): compare at equal
``n_real`` and ``n_fake``, which the settings record.

k-NN is exact, on every accumulated feature vector, batched with torch in float64
(:mod:`._knn`: one ``chunk_size x chunk_size`` block of distances at a time, so memory is bounded
by ``chunk_size``, not by ``n²``; the within-set distances cost half the cross-set ones). Time is
``O(n² d)``: for 10 000 real and 10 000 generated 2048-d features about 55 block products of
2048³ (tests/benchmarks/test_prdc_speed.py). Memory for the features is ``n x d x 4`` bytes per
side (80 MB for 10 000 Inception features), plus their float64 copies while computing.

3D volumes: one feature set per plane of centre slices (see :mod:`.features`); each quantity
is the mean over planes, with the plane's own value as a component ``prdc.<quantity>.<plane>``;
the value is the mean over planes of the per-plane F-scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from bench_core.api import API_VERSION, BenchError, MetricValue
from bench_core.hookspecs import hookimpl

from . import _knn
from .features import FeatureMetricBase

QUANTITIES = ("precision", "recall", "density", "coverage")
_DEFINITIONS = {
    "precision": "fraction of generated items within the k_pr-NN ball of some real item (d <= r)",
    "recall": "fraction of real items within the k_pr-NN ball of some generated item (d <= r)",
    "density": "mean over generated items of the number of real k_dc-NN balls holding it (d < r), over k_dc",
    "coverage": "fraction of real items whose k_dc-NN ball holds some generated item (d < r)",
}


def check_features(metric: str, **sets: np.ndarray | torch.Tensor) -> None:
    """Raise :class:`BenchError` unless every set is a finite 2D matrix and all have one width."""
    widths = set()
    for name, x in sets.items():
        if x.ndim != 2:
            raise BenchError(f"{metric}: {name} features must be a 2D (items, dims) matrix, got shape {tuple(x.shape)}")
        if not bool(np.isfinite(np.asarray(x)).all()):
            raise BenchError(f"{metric}: {name} features contain NaN or Inf (check the feature extractor's input)")
        widths.add(int(x.shape[1]))
    if len(widths) > 1:
        raise BenchError(f"{metric}: feature sets differ in width: {sorted(widths)}")


def too_few(k_pr: int, k_dc: int, n_real: int, n_fake: int) -> str | None:
    """Why sets of ``n_real`` and ``n_fake`` items are too small for these ``k`` (a k-th other item), or None."""
    for option, k, n, what in (("k_pr", k_pr, n_real, "real"), ("k_dc", k_dc, n_real, "real"),
                               ("k_pr", k_pr, n_fake, "generated")):  # fmt: skip
        if n <= k:
            return (
                f"prdc: {option}={k} needs more than {k} {what} items, got {n}; evaluate more items "
                f"(evaluation n_samples / max_items) or lower {option}"
            )
    return None


def prdc(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k_pr: int = 3,
    k_dc: int = 5,
    chunk_size: int = _knn.DEFAULT_BLOCK,
) -> dict[str, Any]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` feature rows, exactly.

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats and, under ``"per_item"``,
    each quantity's per-item values (per generated item for precision and density, per real
    item for recall and coverage). Raises :class:`BenchError` for NaN/Inf features, sets of
    different widths, or sets too small for their ``k`` (the plugin reports those unavailable).
    """
    check_features("prdc", real=real, fake=fake)
    problem = too_few(k_pr, k_dc, len(real), len(fake))
    if problem is not None:
        raise BenchError(problem)
    r, f = _knn.prepare(torch.as_tensor(real), torch.as_tensor(fake))
    (r_pr, _), (r_dc, _) = _knn.kth_neighbours(r, (k_pr, k_dc), chunk_size)
    ((f_pr, _),) = _knn.kth_neighbours(f, (k_pr,), chunk_size)
    in_real, density_count, in_fake, covered = _knn.prdc_counts(r, f, r_pr, f_pr, r_dc, chunk_size)
    per_item = {
        "precision": in_real.double(),
        "recall": in_fake.double(),
        "density": density_count.double() / k_dc,
        "coverage": covered.double(),
    }
    out: dict[str, Any] = {q: float(v.mean()) for q, v in per_item.items()}
    out["per_item"] = {q: v.tolist() for q, v in per_item.items()}
    return out


def f_score(precision: float, recall: float) -> float:
    """``2 P R / (P + R)``, 0 when both are 0."""
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


class PRDC(FeatureMetricBase):
    """Precision, recall, density and coverage of predictions (generated) against targets (real).

    Options: ``k_pr`` (3, precision and recall), ``k_dc`` (5, density and coverage),
    ``chunk_size`` (2048 rows per block of distances; memory, not the value), and those of
    :class:`~.fid.FID`: ``features`` (``"inception"`` or ``"pyramid"``), ``weights``,
    ``feature_dims``, ``feature_cache``, ``out_of_range``.
    """

    name = "prdc"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = True
    description = "Precision, recall, density and coverage of output features against target features (k-NN)"
    headline = False
    kind = "distribution"
    dims = frozenset({2, 3})

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        k_pr: int = 3,
        k_dc: int = 5,
        features: str = "inception",
        weights: str | None = None,
        feature_dims: int = 2048,
        feature_cache: bool = True,
        chunk_size: int = _knn.DEFAULT_BLOCK,
        out_of_range: str = "error",
    ) -> None:
        for option, value in (("k_pr", k_pr), ("k_dc", k_dc)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise BenchError(f"prdc: {option} must be a positive integer, got {value!r}")
        super().__init__(data_range, dims, weights, feature_dims, out_of_range, feature_cache, features)
        self.k_pr, self.k_dc = k_pr, k_dc
        self.chunk_size = _knn.check_block(chunk_size, self.name)
        self._real: list[list[np.ndarray]] = [[] for _ in range(self.n_sets)]
        self._fake: list[list[np.ndarray]] = [[] for _ in range(self.n_sets)]

    def _add(self, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
        for kept, feats in zip(self._real + self._fake, real + fake, strict=True):
            kept.append(feats)

    def compute(self) -> MetricValue:
        """The F-score of precision and recall, the four quantities as components (per plane in 3D)."""
        if not self.space.available:
            return self._unavailable()
        problem = too_few(self.k_pr, self.k_dc, self.n_real, self.n_fake)
        if problem is not None:  # a small test set costs this metric, not the cell's other numbers
            return self._unavailable(problem)
        per_set = [
            prdc(np.concatenate(r), np.concatenate(f), self.k_pr, self.k_dc, self.chunk_size)
            for r, f in zip(self._real, self._fake, strict=True)
        ]
        settings = self.settings()
        f_scores = [f_score(v["precision"], v["recall"]) for v in per_set]
        components = {}
        for q in QUANTITIES:
            part = {**settings, "quantity": f"{q}: {_DEFINITIONS[q]}"}
            values = [v[q] for v in per_set]
            per_item = [v["per_item"][q] for v in per_set]
            value = self._per_plane(part, values, per_item=per_item)
            components[q] = value
            components.update({f"{q}.{plane}": sub for plane, sub in value.components.items()})
            value.components = {}
        mean_f = math.fsum(f_scores) / len(f_scores)
        return MetricValue(value=mean_f, std=None, n=self.n_fake, settings=settings, components=components,
                           counters=self._counters())  # fmt: skip

    def reset(self) -> None:
        """Forget kept features and counts."""
        for kept in self._real + self._fake:
            kept.clear()
        self._reset_counts()

    def settings(self) -> dict[str, Any]:
        """Every choice that determines the values (stored as provenance)."""
        return {
            **self._common_settings(),
            "k_pr": self.k_pr,
            "k_dc": self.k_dc,
            "neighbourhoods": "ball of radius = distance to the k-th nearest other item of the same set",
            "distances": "exact Euclidean between feature vectors (float64), all items kept",
            "value": "F-score 2PR/(P+R) of precision and recall (torch-fidelity's f_score)"
            + ("; 3D: mean of the per-plane F-scores" if self.planes else ""),
            "warning": "precision, recall, density and coverage depend on n_real and n_fake: compare at equal n",
        }


@hookimpl
def bench_metrics() -> list[type]:
    """Register :class:`PRDC`."""
    return [PRDC]
