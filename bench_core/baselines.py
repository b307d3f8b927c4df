"""Baselines: trivial predictors fitted on the training split, scored like any model.

A table of PSNR values means little without a reference: a blurry model can score
well on data whose mean image is already close to every test item. The engine therefore
evaluates, once per dataset and without training, a few predictors that know nothing
about the input (``mean-image``), copy it (``identity``) or look it up
(``nearest-train``), through the same evaluator and metrics as the models. Their rows
are stored with ``kind = "baseline"``; tables show them but never rank them.

Each baseline is a ``torch.nn.Module`` with the model plugins' ``reconstruct`` /
``translate`` signatures, so :func:`bench_core.evaluator.evaluate` runs it unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from bench_core.api import RECONSTRUCT, TRANSLATE, DataSpec

VERSION = "1"
NEAREST_MAX_ITEMS = 4096  # nearest-train holds the training items in memory: at most this many


class Baseline(torch.nn.Module):
    """A predictor fitted on the training split in one streaming pass."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    description: ClassVar[str]

    def incompatibility(self, spec: DataSpec) -> str | None:
        """Why this baseline cannot serve data of ``spec`` (``None`` when it can)."""
        return None

    def fit(self, train: Dataset, spec: DataSpec, batch_size: int) -> None:
        """Fit on the training split."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What the baseline's values depend on, stored with its rows."""
        return {"baseline": self.name, "version": VERSION}


def _batches(train: Dataset, batch_size: int):
    # Augmentation never applies: baselines see the training split exactly as stored.
    yield from DataLoader(train, batch_size=batch_size, shuffle=False)


class MeanImage(Baseline):
    """The per-pixel mean of the training targets, whatever the input."""

    name = "mean-image"
    capabilities = frozenset({RECONSTRUCT, TRANSLATE})
    description = "per-pixel mean of the training targets, the same output for every input"

    def fit(self, train: Dataset, spec: DataSpec, batch_size: int) -> None:
        sums = {m: torch.zeros(spec.channels_of(m), *spec.shape, dtype=torch.float64) for m in spec.modalities}
        count = 0
        for batch in _batches(train, batch_size):
            count += len(batch["id"])
            for modality, total in sums.items():
                total += batch[modality].to(torch.float64).sum(0)
        if count == 0:
            raise ValueError("the training split is empty")
        self.means = {m: (total / count).float() for m, total in sums.items()}
        self.n_train = count

    def _mean(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        mean = self.means[modality].to(x.device)
        return mean.unsqueeze(0).expand(x.shape[0], *mean.shape).clone()

    def reconstruct(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """The mean training image of ``modality``, once per input."""
        return self._mean(x, modality)

    def translate(self, x: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """The mean training image of ``target``, once per input."""
        return self._mean(x, target)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "n_train": self.n_train}


class Identity(Baseline):
    """The input itself as the translation, carried linearly from its modality's value range to the target's."""

    name = "identity"
    capabilities = frozenset({TRANSLATE})
    description = "the input image returned unchanged as the other modality"

    def __init__(self) -> None:
        super().__init__()
        self.ranges: dict[str, tuple[float, float]] = {}

    def incompatibility(self, spec: DataSpec) -> str | None:
        if len(set(spec.channels)) > 1:
            return f"modalities have different channel counts {dict(zip(spec.modalities, spec.channels, strict=True))}"
        return None

    def fit(self, train: Dataset, spec: DataSpec, batch_size: int) -> None:
        """Nothing to fit: only the modalities' value ranges are kept."""
        self.ranges = {m: spec.range_of(m) for m in spec.modalities}

    def translate(self, x: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """The input; rescaled (its range's low end to the target's, high to high) where the ranges differ."""
        (lo, hi), (to_lo, to_hi) = self.ranges[source], self.ranges[target]
        if (lo, hi) == (to_lo, to_hi):
            return x.clone()
        return (x - lo) / (hi - lo) * (to_hi - to_lo) + to_lo


class NearestTrain(Baseline):
    """The target of the training item whose input is nearest in L2 (a lookup table, not a model)."""

    name = "nearest-train"
    capabilities = frozenset({TRANSLATE})
    description = "the target of the training pair whose input is nearest to the test input in L2"

    def __init__(self, max_items: int = NEAREST_MAX_ITEMS, chunk: int = 256) -> None:
        super().__init__()
        self.max_items, self.chunk = max_items, chunk

    def fit(self, train: Dataset, spec: DataSpec, batch_size: int) -> None:
        n = len(train)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the training split is empty")
        if n > self.max_items:  # a seeded subset keeps memory bounded on large training sets
            keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: self.max_items].sort().values
            train = torch.utils.data.Subset(train, keep.tolist())
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in spec.modalities}
        for batch in _batches(train, batch_size):
            for modality, chunks in parts.items():
                chunks.append(batch[modality].float())
        self.items = {m: torch.cat(chunks) for m, chunks in parts.items()}
        self.flat = {m: t.flatten(1) for m, t in self.items.items()}
        self.n_train = n

    def translate(self, x: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """The training target paired with the nearest training source of each input."""
        keys = self.flat[source]
        query = x.float().flatten(1).cpu()
        best = torch.full((query.shape[0],), float("inf"))
        index = torch.zeros(query.shape[0], dtype=torch.long)
        for start in range(0, keys.shape[0], self.chunk):  # no n_test x n_train matrix held at once
            dist = torch.cdist(query, keys[start : start + self.chunk])
            value, where = dist.min(1)
            better = value < best
            best[better], index[better] = value[better], where[better] + start
        return self.items[target][index].to(x.device)

    def settings(self) -> dict[str, Any]:
        used = min(self.n_train, self.max_items)
        return {**super().settings(), "n_train": self.n_train, "n_train_used": used, "distance": "L2 on inputs"}


BASELINES: tuple[type[Baseline], ...] = (MeanImage, Identity, NearestTrain)
