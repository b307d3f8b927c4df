"""Feature spaces of the distribution metrics (FID, KID, PRDC, memorisation) and their shared input handling.

A feature space maps 2D images ``(N, C, H, W)`` in ``[0, 1]`` to one float32 row per image.
Metrics choose one with the option ``features``:

- ``"inception"`` (default): pytorch-fid's InceptionV3, pool3 (2048-d) unless ``feature_dims``
  names an earlier block, with its offline weights lookup, ``weights="random:SEED"`` for tests and
  the two-layer feature cache (:mod:`.inception`). Without weights the metric is *unavailable*:
  it accepts updates and reports ``NaN`` with ``status = "unavailable"`` and the reason.
- ``"pyramid"``: weight-free, deterministic descriptors built on the SWD's Laplacian pyramid
  (:func:`.swd.laplacian_pyramid`: 5-tap binomial filter, reflect borders, subsampling by 2),
  so the metrics run offline, in tests and on data Inception was never trained for. Each image
  gets :data:`PYRAMID_LEVELS` levels (two band-pass, one low-pass residual) whatever its size;
  every level is average-pooled to a :data:`PYRAMID_GRID` x :data:`PYRAMID_GRID` grid (adaptive
  pooling, so non-square images work): the band-pass levels as local RMS contrast,
  ``sqrt(pool(band²))``, the residual as mean intensity, ``pool(level)``; channels are kept.
  That is ``C x 3 x 64`` values per image: layout (the coarse image) and local contrast at two
  finer scales, all in intensity units of ``[0, 1]``. No cache: computing them costs less than
  looking them up. Images need sides of at least 8 pixels.

Values from different feature spaces are different numbers: the settings name the space in
``extractor`` (and the Inception weights' hash), so the report never ranks them together.

Volumes (``dims=3``) are compared per plane, "2.5D" as FID does: the three orthogonal
centre slices of each volume (:func:`.planes.plane_slices`) give one feature set per plane,
each metric reports one value per plane as a component (``name.axial``, ``name.coronal``,
``name.sagittal``) and their mean as its value.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench_core.api import BenchError, MetricValue
from bench_core.metricbase import OUT_OF_RANGE_POLICIES, RANGE_TOLERANCE, check_options, check_range

from . import inception
from .inception_network import BLOCK_INDEX_BY_DIM, BLOCK_NAMES, RESIZE, load_error
from .inception_weights import WeightsSource, resolve_weights
from .planes import PLANE_SLICES, PLANES, plane_slices
from .swd import laplacian_pyramid

FEATURE_SPACES = ("inception", "pyramid")
PYRAMID_LEVELS = 3
PYRAMID_GRID = 8
PYRAMID_MIN_SIDE = 2**PYRAMID_LEVELS


class FeatureSpace(ABC):
    """Images ``(N, C, H, W)`` in ``[0, 1]`` -> ``(N, d)`` float32 feature rows.

    ``available`` is False (and ``reason`` says why) when the space cannot compute features here.
    """

    available: bool = True
    reason: str | None = None

    @abstractmethod
    def channel_problem(self, channels: int) -> str | None:
        """Why images with ``channels`` channels cannot be used, or None."""

    @abstractmethod
    def __call__(self, images: torch.Tensor, real: bool) -> np.ndarray:
        """Feature rows of ``images``; ``real`` marks dataset images (which may be cached on disk)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Entries naming the space and everything that changes its features."""


class InceptionSpace(FeatureSpace):
    """pytorch-fid's InceptionV3 features through the caches of :mod:`.inception`."""

    def __init__(self, metric: str, weights: str | None, feature_dims: int, feature_cache: bool) -> None:
        if feature_dims not in BLOCK_INDEX_BY_DIM:
            raise BenchError(
                f"{metric}: feature_dims must be one of {sorted(BLOCK_INDEX_BY_DIM)}, got {feature_dims!r}"
            )
        self.feature_dims = feature_dims
        self.feature_cache = feature_cache
        self.source = resolve_weights(weights)
        if self.source.available:
            error = load_error(self.source, feature_dims)
            if error is not None:
                self.source = WeightsSource("unavailable", path=self.source.path, reason=error)
        self.available = self.source.available
        self.reason = self.source.reason

    def channel_problem(self, channels: int) -> str | None:
        """Inception takes gray (repeated to 3 channels) or RGB images."""
        return None if channels in (1, 3) else f"{channels} channels; Inception features need 1 or 3"

    def __call__(self, images: torch.Tensor, real: bool) -> np.ndarray:
        """Features through the in-memory cache, and the on-disk one for real images (they recur across runs)."""
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return inception.features(x, self.source, self.feature_dims, disk=real and self.feature_cache)

    def settings(self) -> dict[str, Any]:
        """The network, its weights and preprocessing."""
        block = BLOCK_NAMES[self.feature_dims]
        return {
            "extractor": f"pytorch-fid InceptionV3 {block} {self.feature_dims}",
            **self.source.provenance(),
            "resize": f"{RESIZE}x{RESIZE} bilinear, align_corners=False (pytorch-fid resize_input=True)",
            "input_scaling": "x / data_range to [0, 1], then 2x - 1 (pytorch-fid normalize_input=True)",
            "channels": "gray repeated to 3 channels; RGB as is",
        }


class PyramidSpace(FeatureSpace):
    """Weight-free Laplacian-pyramid descriptors pooled per image (module docstring)."""

    def channel_problem(self, channels: int) -> str | None:
        """Any channel count works; each channel gets its own descriptor."""
        return None

    def __call__(self, images: torch.Tensor, real: bool) -> np.ndarray:
        """``(N, C x levels x grid²)`` descriptors, computed in float64 and returned as float32."""
        side = min(images.shape[2:])
        if side < PYRAMID_MIN_SIDE:
            sides = tuple(images.shape[2:])
            raise BenchError(f"pyramid features need image sides of at least {PYRAMID_MIN_SIDE} pixels, got {sides}")
        # laplacian_pyramid halves while the smaller side stays >= min_resolution: this gives PYRAMID_LEVELS levels.
        levels = laplacian_pyramid(images.to(torch.float64), 2, side >> (PYRAMID_LEVELS - 1))
        assert len(levels) == PYRAMID_LEVELS, (side, len(levels))
        grid = (PYRAMID_GRID, PYRAMID_GRID)
        parts = [F.adaptive_avg_pool2d(band.square(), grid).sqrt() for band in levels[:-1]]
        parts.append(F.adaptive_avg_pool2d(levels[-1], grid))
        return torch.stack(parts, dim=2).flatten(1).to(torch.float32).cpu().numpy()

    def settings(self) -> dict[str, Any]:
        """The descriptor's definition."""
        return {
            "extractor": f"Laplacian pyramid descriptors v1 (weight-free): {PYRAMID_LEVELS} levels of the SWD's "
            "pyramid (binomial 5-tap, reflect), each adaptive-average-pooled to "
            f"{PYRAMID_GRID}x{PYRAMID_GRID}: RMS of the band-pass levels, mean of the low-pass residual; "
            f"channels x {PYRAMID_LEVELS} x {PYRAMID_GRID * PYRAMID_GRID} values per image",
            "input_scaling": "x / data_range to [0, 1]",
            "channels": "each channel described on its own",
        }


def make_space(metric: str, features: str, weights: str | None, feature_dims: int, feature_cache: bool) -> FeatureSpace:
    """The feature space named by a metric's options; options of another space are an error, not ignored."""
    if features == "inception":
        return InceptionSpace(metric, weights, feature_dims, feature_cache)
    if features == "pyramid":
        if weights is not None or feature_dims != 2048:
            raise BenchError(f"{metric}: weights and feature_dims apply to features='inception' only")
        return PyramidSpace()
    raise BenchError(f"{metric}: features must be one of {FEATURE_SPACES}, got {features!r}")


class FeatureMetricBase(ABC):
    """Input handling shared by the feature-space metrics: checks, the feature space, planes, counts.

    Subclasses set ``name`` and implement ``_add(real, fake)``: the feature arrays of one
    update, one per feature set (one set in 2D; in 3D one per plane of :data:`.planes.PLANES`,
    in that order). Options: ``features`` (``"inception"`` or ``"pyramid"``), and for Inception
    ``weights``, ``feature_dims`` and ``feature_cache=False`` (keeps features off the on-disk
    cache); ``out_of_range``. Every value it builds carries the clamp count in its ``counters``
    (:meth:`_counters`), never in its settings.
    """

    name = "feature-metric"

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        weights: str | None = None,
        feature_dims: int = 2048,
        out_of_range: str = "error",
        feature_cache: bool = True,
        features: str = "inception",
    ) -> None:
        check_options(self.name, data_range, dims, frozenset({2, 3}))
        if not isinstance(feature_cache, bool):
            raise BenchError(f"{self.name}: feature_cache must be true or false, got {feature_cache!r}")
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise BenchError(f"{self.name}: out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}")
        self.data_range = float(data_range)
        # Not `self.dims`: that class attribute lists the supported dims for the registry.
        self.spatial_dims = dims
        self.out_of_range = out_of_range
        self.features = features
        self.space = make_space(self.name, features, weights, feature_dims, feature_cache)
        self.planes: tuple[str, ...] = PLANES if dims == 3 else ()
        self.n_real = 0
        self.n_fake = 0
        self._clamped = 0
        self._channels: set[int] = set()

    @property
    def n_sets(self) -> int:
        """Feature sets per side: one per plane in 3D, else one."""
        return len(self.planes) or 1

    def _check(self, what: str, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise BenchError(f"{self.name}: {what} must be a float tensor")
        if x.dim() != self.spatial_dims + 2 or x.shape[0] == 0:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise BenchError(f"{self.name}: expected non-empty {layout} {what}, got shape {tuple(x.shape)}")
        problem = self.space.channel_problem(int(x.shape[1]))
        if problem is not None:
            raise BenchError(f"{self.name}: {what} has {problem}")
        x, clamped = check_range(self.name, what, x, self.data_range, self.out_of_range)
        self._clamped += clamped
        self._channels.add(int(x.shape[1]))
        return x

    def _features(self, x: torch.Tensor, real: bool) -> list[np.ndarray]:
        """One feature array per plane (one in 2D) of checked items."""
        return [self.space(b / self.data_range, real) for b in plane_slices(x, self.spatial_dims)]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add generated (``pred``) and real (``target``) items; their counts may differ."""
        pred = self._check("pred", pred)
        target = self._check("target", target)
        self.n_fake += pred.shape[0]
        self.n_real += target.shape[0]
        if self.space.available:
            self._add(self._features(target, real=True), self._features(pred, real=False))

    @abstractmethod
    def _add(self, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
        """Accumulate the features of one update's real and generated items (one array per feature set)."""

    def _reset_counts(self) -> None:
        self.n_real = 0
        self.n_fake = 0
        self._clamped = 0
        self._channels = set()

    def _unavailable(self, reason: str | None = None) -> MetricValue:
        settings = {**self.settings(), "status": "unavailable", "reason": reason or self.space.reason}
        return MetricValue(value=float("nan"), std=None, n=self.n_fake, settings=settings, counters=self._counters())

    def _counters(self) -> dict[str, float]:
        """What happened to the inputs since reset: values clamped into ``[0, data_range]``."""
        return {"clamped_values": self._clamped}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every choice that determines the value (stored as provenance)."""

    def _common_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "status": "ok" if self.space.available else "unavailable",
            **self.space.settings(),
            "input_channels": sorted(self._channels),
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "out_of_range": self.out_of_range,
            "range_tolerance": RANGE_TOLERANCE * self.data_range,
        }
        if self.spatial_dims == 3:
            settings["planes"] = (
                "2.5D: value = mean of the per-plane values (components), one feature set per plane of "
                "centre slices: "
                + "; ".join(f"{p} = {PLANE_SLICES[p]}" for p in PLANES)
                + ". Plane names assume the dataset's (D, H, W) orientation with D the inferior-superior axis"
            )
        if not self.space.available:
            settings["reason"] = self.space.reason
        return settings

    def _component(
        self, settings: dict[str, Any], plane: str, value: float, std: float | None, **extra: Any
    ) -> MetricValue:
        """One plane's value as a :attr:`MetricValue.components` entry (row ``<metric>.<plane>``).

        Its counters are the metric's (:meth:`_counters`) and any ``counters`` in ``extra`` (the plane's own).
        """
        part = {k: v for k, v in settings.items() if k != "planes"}
        part["plane"] = f"{plane}: {PLANE_SLICES[plane]}; assumes the dataset's (D, H, W) orientation"
        counters = {**self._counters(), **extra.pop("counters", {})}
        return MetricValue(value=value, std=std, n=self.n_fake, settings=part, counters=counters, **extra)

    def _per_plane(
        self,
        settings: dict[str, Any],
        values: list[float],
        set_settings: list[dict[str, Any]] | None = None,
        **extra: list[Any],
    ) -> MetricValue:
        """The value of a metric from its per-set values: the value itself in 2D, the plane mean in 3D.

        ``set_settings`` adds entries to each set's settings (the value's in 2D, the plane's
        component's in 3D); ``extra`` holds per-set :class:`MetricValue` fields (e.g.
        ``per_item``), one entry per set.
        """
        fields = [{key: options[i] for key, options in extra.items()} for i in range(len(values))]
        own = set_settings or [{} for _ in values]
        if not self.planes:
            return MetricValue(value=values[0], std=None, n=self.n_fake, settings={**settings, **own[0]},
                               counters=self._counters(), **fields[0])  # fmt: skip
        components = {
            plane: self._component({**settings, **own[i]}, plane, value, None, **fields[i])
            for i, (plane, value) in enumerate(zip(self.planes, values, strict=True))
        }
        mean = math.fsum(values) / len(values)
        return MetricValue(value=mean, std=None, n=self.n_fake, settings=settings, components=components,
                           counters=self._counters())  # fmt: skip
