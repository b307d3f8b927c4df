"""The public plugin API: what a model, dataset or metric plugin provides to the engine.

Everything a third-party package needs is here and in :mod:`bench_core.hookspecs`. The
engine talks to plugins only through these protocols, so a plugin never has to know the
engine's internals and the engine never imports a plugin by name.

``API_VERSION`` is bumped when a protocol changes incompatibly. A plugin class declares
the version it was written against in ``api_version``; the plugin manager refuses classes
whose major version differs and lists them with the reason in ``bench plugins``.

This module must stay importable without torch (``bench --help`` imports it indirectly):
tensors appear only in type hints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch.utils.data import Dataset

API_VERSION = 1
"""Major version of the plugin API described in this module."""

API_MINOR = 1
"""Minor version: additions a plugin of the same major version may use, old forms kept working.

1.1: a model's ``tasks`` (one-way translators), ``incompatibility(spec, config)``, per-modality
value ranges in :class:`DataSpec` (``ranges``), the metric contract for undefined values.
"""

# Capabilities a model may declare; the engine derives evaluation tasks from them.
RECONSTRUCT = "reconstruct"
TRANSLATE = "translate"
SAMPLE = "sample"
CAPABILITIES = frozenset({RECONSTRUCT, TRANSLATE, SAMPLE})

SPLITS = ("train", "val", "test")

TASK_ROLES: Mapping[str, str] = {
    "recon": RECONSTRUCT, "A2A": RECONSTRUCT, "B2B": RECONSTRUCT, "A2B": TRANSLATE, "B2A": TRANSLATE, "sample": SAMPLE,
}  # fmt: skip
"""The task roles a model may list in its optional ``tasks`` attribute, each with the capability it needs.

Paired data's tasks are named after its modalities (``ct2mr``); a role names a task by position
(A: the first modality, B: the second), so one declaration fits every paired dataset.
"""


class BenchError(Exception):
    """An error the user can act on; the CLI prints its message without a traceback."""


class PluginError(BenchError):
    """A plugin could not be loaded, is ambiguous or broke its contract."""


class DataError(BenchError):
    """A dataset file or folder is missing, unreadable or does not match its declared format."""


@dataclass(frozen=True)
class DataSpec:
    """What a dataset yields, so the engine can pair it with models and metrics.

    Attributes:
        modalities: names of the image fields in each item: one (``("image",)``) for
            reconstruction data, two (``("A", "B")``) for paired translation data.
        channels: channels per modality, in the order of ``modalities``.
        dims: spatial dimensions, 2 (images) or 3 (volumes).
        shape: spatial shape of every yielded tensor (``(H, W)`` or ``(D, H, W)``).
        value_range: ``(low, high)`` of every modality: the API 1.0 form, kept working. With
            ``ranges`` it may be left out; it then reads as the common range when every
            modality has the same one, and as ``None`` when they differ.
        split_sizes: number of items per split.
        description: one line for reports (modality names, source, preprocessing).
        ranges: ``(low, high)`` per modality, in the order of ``modalities`` (API 1.1), e.g.
            CT in Hounsfield units beside MR in ``[0, 1]``. The engine maps each modality's
            range to ``[0, 1]`` before computing metrics (a prediction by the range of the
            modality it predicts), and metrics use ``data_range=1``. Default: ``value_range``
            for every modality. Read one with :meth:`range_of`.
    """

    modalities: tuple[str, ...]
    channels: tuple[int, ...]
    dims: int
    shape: tuple[int, ...]
    value_range: tuple[float, float] | None = None
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    description: str = ""
    ranges: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.ranges is None:
            if self.value_range is None:
                raise ValueError("DataSpec needs value_range (one range) or ranges (one per modality)")
            object.__setattr__(self, "ranges", (_range(self.value_range),) * len(self.modalities))
            return
        ranges = tuple(_range(r) for r in self.ranges)
        if len(ranges) != len(self.modalities):
            count = f"DataSpec has {len(ranges)} ranges {ranges}"
            raise ValueError(f"{count} for modalities {self.modalities}; give one each")
        if self.value_range is not None and set(ranges) != {_range(self.value_range)}:
            raise ValueError(f"DataSpec value_range {self.value_range} contradicts ranges {ranges}; give ranges only")
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "value_range", ranges[0] if len(set(ranges)) == 1 else None)

    @property
    def paired(self) -> bool:
        """True for datasets with two modalities (translation pairs)."""
        return len(self.modalities) == 2

    def channels_of(self, modality: str) -> int:
        """Channel count of ``modality``."""
        return self.channels[self.modalities.index(modality)]

    def range_of(self, modality: str) -> tuple[float, float]:
        """The ``(low, high)`` value range of ``modality``."""
        assert self.ranges is not None  # set by __post_init__
        return self.ranges[self.modalities.index(modality)]


def _range(value: Iterable[float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not low < high:
        raise ValueError(f"DataSpec value range ({low:g}, {high:g}) must have low < high")
    return low, high


@runtime_checkable
class DatasetPlugin(Protocol):
    """A dataset: a reader for one on-disk format, optionally able to write embedded data.

    Constructed as ``cls(root, **options)``. ``root`` is the folder holding the data in
    the format the plugin reads. Items of a split are dicts: one tensor per modality
    (shape ``(C, *spatial)``, float32, inside ``spec().value_range``) plus ``"id"``, a
    string naming the source file (used to name output images). Iteration order is
    sorted and deterministic. A bad file raises :class:`DataError` naming the file.

    A plugin that can synthesise data in its own format implements the optional
    classmethod ``make_embedded(root: Path, n: int, seed: int) -> None``; suites then
    use ``root: embedded`` and the engine writes the data once into its cache.

    An optional class attribute ``obtain: str`` says where to get the real data; the
    engine adds it to the error when a suite names a data folder that does not exist.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    api_version: ClassVar[int]

    def __init__(self, root: Path, **options: Any) -> None: ...

    def spec(self) -> DataSpec:
        """Describe modalities, channels, dims, shape, value range and split sizes."""
        ...

    def split(self, name: str) -> Dataset:
        """Return the map-style torch dataset of split ``name`` (one of ``SPLITS``)."""
        ...

    def fingerprint(self) -> str:
        """A fast content fingerprint (file list, sizes, sampled content) keying caches."""
        ...


@dataclass
class OptimizerSpec:
    """Optimiser settings of a training stage; the engine builds the torch optimiser."""

    name: str = "adam"  # adam | adamw | adamax | sgd
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass
class TrainingStage:
    """One phase of training that the engine's loop runs (models may have several).

    The engine owns the loop: device placement, precision, optimiser, gradient clipping
    and skipping, EMA, checkpoints, progress and curves. The stage owns the maths.

    Attributes:
        name: stage name, unique within the model (e.g. ``"vqvae"``, ``"top_prior"``).
        parameters: callable returning the parameters this stage optimises.
        loss: ``loss(batch) -> {"loss": scalar tensor, other: scalar tensors...}``;
            ``batch`` is the collated dataset item dict already on the device. Extra
            entries are logged as curves.
        optimizer: optimiser settings.
        frozen: callable returning modules kept in eval mode and without gradients
            during this stage (e.g. the VQ-VAE while a prior learns its codes).
        grad_clip: max gradient norm (``None``: no clipping); global over the stage's
            parameters, or per group when ``clip_groups`` is given.
        clip_groups: callable returning parameter groups clipped separately at
            ``grad_clip`` (e.g. encoder and decoder, as the 3D VDVAE source does).
        skip_threshold: skip an update whose gradient norm exceeds this (``None``: never).
            Non-finite losses or gradients are always skipped and counted.
        ema_decay: keep an exponential moving average of the parameters and evaluate
            with it (``None``: off).
        default_steps: training steps (optimiser updates) when the suite gives no budget.
        batch_size: default batch size of this stage (items per forward pass).
        accumulate: forward/backward passes per optimiser update (gradient accumulation);
            the update's gradient is that of one batch of ``batch_size * accumulate``
            items (each pass weighted by its share of the items), in the memory of one.
        augment: whether the suite's paired augmentation applies to this stage's batches
            (``False`` for stages that must see the data as it is, e.g. a warm-up).
        continue_optimizer: start from the optimiser state the previous stage ended with
            (moments and step counts), as one optimiser running through both stages
            would; the two stages must optimise the same parameters with the same kind
            of optimiser.
    """

    name: str
    parameters: Callable[[], Iterable[Any]]
    loss: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    frozen: Callable[[], Iterable[Any]] | None = None
    grad_clip: float | None = None
    clip_groups: Callable[[], list[Iterable[Any]]] | None = None
    skip_threshold: float | None = None
    ema_decay: float | None = None
    default_steps: int = 1000
    batch_size: int = 16
    accumulate: int = 1
    augment: bool = True
    continue_optimizer: bool = False


@runtime_checkable
class ModelPlugin(Protocol):
    """A generative model: a ``torch.nn.Module`` subclass with these class attributes.

    Constructed as ``cls(config, spec)`` where ``config`` is the merged configuration
    (a named entry of ``configs`` updated by the suite's overrides) and ``spec`` the
    dataset's :class:`DataSpec`. All inputs and outputs are in the dataset's value range.

    Capability methods (implement those declared in ``capabilities``):

    - ``reconstruct(x, modality) -> Tensor``: encode and decode a batch of one modality.
    - ``translate(x, source, target) -> Tensor``: map a batch from one modality to the other.
    - ``sample(n, temperature=1.0, generator=None) -> Tensor``: draw ``n`` images of the
      dataset's first modality.

    Optional: ``tasks: frozenset[str]``, the task roles of :data:`TASK_ROLES` the model does,
    for a model that does only some tasks of its capabilities: a one-way translator declares
    ``capabilities = frozenset({TRANSLATE})`` and ``tasks = frozenset({"A2B"})`` and is never
    asked for B2A. Default: every task of its capabilities. Each role needs its capability.

    Optional: ``evaluation_metrics(loader) -> dict[str, float]`` for model-specific numbers
    (codebook usage, ELBO, ...) stored alongside the metric plugins' values.

    A task that raises while it is evaluated is recorded as failed, with the error, and the
    cell keeps the other tasks' rows (the cell's ``details["failed_tasks"]``); a cell fails only
    when every task does.

    Optional, for a model that reimplements published code: reading the checkpoints that
    code's own training script saves (``bench convert``, and a suite's ``load:`` of such a
    file; see ``bench_core.convert`` and docs/plugins.md):

    - ``from_source(sources, config) -> dict[str, Tensor]`` (classmethod): ``sources`` is the
      list of objects ``torch.load(..., weights_only=True)`` returned for the source files, in
      the order given (one file for most sources); ``config`` the merged configuration. Returns
      this model's state dict (every parameter and buffer). Every source weight must be used
      and every key of ours set: raise ``BenchError`` naming an unknown or missing key, never
      leave a weight at its random initial value.
    - ``source_spec(sources, config) -> DataSpec`` (classmethod): a spec the source model
      fits (its channels, a shape it accepts), so ``bench convert`` can build the model, with
      no dataset at hand, to check the converted keys and shapes.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    api_version: ClassVar[int]
    capabilities: ClassVar[frozenset[str]]
    dims: ClassVar[frozenset[int]]
    configs: ClassVar[Mapping[str, Mapping[str, Any]]]
    default_config: ClassVar[str]

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None: ...

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any]) -> str | None:
        """Why this model, with the resolved ``config``, cannot serve a dataset with ``spec`` (``None``: it can).

        The engine asks before building the model, so ``__init__`` need not check again; the
        cell is recorded as skipped with the reason. The API 1.0 form ``incompatibility(cls, spec)``
        (no config) keeps working: the engine passes the config only to a method that takes it.
        """
        ...

    def stages(self) -> list[TrainingStage]:
        """The training stages, run in order by the engine."""
        ...


@dataclass
class MetricValue:
    """A computed metric: value, spread, sample count and the settings that produced it.

    ``std`` is the population standard deviation (ddof 0) of the per-item values for
    paired metrics, or the metric's own spread (e.g. over KID subsets); ``None`` when
    there is none. A metric that cannot run here (FID without its weights) returns
    ``value = nan`` with ``settings["status"] = "unavailable"`` and ``settings["reason"]``.

    ``components`` holds named parts reported as rows of their own (metric ``name.part``),
    for a metric whose headline value summarises several measurements, e.g. 2.5D FID's
    mean over the three orthogonal planes with one component per plane.

    ``counters`` holds counts of what happened while computing (values clamped into range,
    eigenvalues clipped, ...): stored beside the value, never part of the settings, so two
    runs that clamped a different number of pixels still rank together.

    ``item_details`` holds, for a metric of the ``sample`` task, one JSON object per generated
    sample in the order drawn (e.g. memorisation's nearest training item: its id and distance).
    The engine saves them in the cell's ``eval.json`` under ``samples``, keyed by the saved
    sample's name (``sample_00000``), as evidence for readers; they never enter the tables.
    """

    value: float
    std: float | None
    n: int
    settings: dict[str, Any]
    per_item: list[float] | None = None
    components: dict[str, MetricValue] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    item_details: list[dict[str, Any]] | None = None


@runtime_checkable
class MetricPlugin(Protocol):
    """A metric with the update / compute / reset shape of torchmetrics.

    Constructed as ``cls(data_range=1.0, dims=2, **options)``. The engine feeds
    predictions and targets mapped to ``[0, data_range]``, shaped ``(N, C, *spatial)``.

    - ``kind = "paired"`` metrics compare each prediction with its target and return the
      per-item values from ``update`` (a 1D tensor of length N); ``compute`` gives their
      mean and std over everything seen.
    - ``kind = "distribution"`` metrics compare the set of predictions (samples) with the
      set of targets; ``update`` returns ``None``.

    ``settings()`` returns every choice that changes the number (data_range, window,
    preset, weights hash, ...): it is stored as the value's provenance, and values with
    different settings are never ranked together.

    Undefined values: where the number is undefined for the data (a correlation of constant
    images, a ratio over zero, fewer samples than the metric needs), return ``nan`` (per item
    from ``update``, or as ``MetricValue.value``), never 0 or another made-up number, and say
    why in ``settings["reason"]`` when it is the whole value; a mean over per-item values
    some of which are ``nan`` is ``nan`` unless the metric documents skipping them and counts
    the skipped items in ``MetricValue.counters``. Where the maths gives an infinity (PSNR of
    identical images without a cap) return ``inf`` or ``-inf``. The store, the exports and
    ``leaderboard.json`` keep ``nan``, ``inf`` and ``-inf`` apart (docs/outputs.md); tables
    show them and never rank them.

    Optional, for metrics that compare samples with the *training* set (memorisation): a
    class attribute ``needs_train = True`` and a method ``update_train(images, ids)``. The
    engine then builds the metric for the ``sample`` task only and, after the test pass, streams
    the training split's target images through ``update_train`` (``(N, C, *spatial)`` mapped to
    ``[0, data_range]`` like the targets, with the items' ids), before ``compute``. A metric
    that got no training items should report itself unavailable (``value = nan``,
    ``settings["status"] = "unavailable"`` and the reason). Metrics without the attribute are
    never given training items.

    Optional class attributes saying how the metric is read (the console, tables and report
    use them and never name a particular metric): ``description: str``, one line for the
    report and ``bench plugins --details`` (default: the first line of the class docstring);
    ``headline: bool``, whether the metric is among the numbers shown first (console summary
    after each cell, the report's comparison views; default ``True`` for ranked metrics,
    ``False`` when ``higher_is_better`` is ``None``).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    api_version: ClassVar[int]
    higher_is_better: ClassVar[bool | None]  # None: no ranking direction (shown, never ranked)
    kind: ClassVar[str]  # "paired" | "distribution"
    dims: ClassVar[frozenset[int]]

    def __init__(self, data_range: float = 1.0, dims: int = 2, **options: Any) -> None: ...

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Accumulate a batch; paired metrics return per-item values."""
        ...

    def compute(self) -> MetricValue:
        """The metric over everything accumulated since the last reset."""
        ...

    def reset(self) -> None:
        """Forget accumulated state."""
        ...

    def settings(self) -> dict[str, Any]:
        """The settings that determine the value (stored as provenance)."""
        ...


def cache_dir() -> Path:
    """The engine's cache folder: ``$BENCH_CACHE_DIR``, else ``~/.cache/medgen-bench``.

    Embedded datasets are written under ``embedded/``; plugins keep their own caches
    (e.g. Inception features) in a subfolder named after themselves.
    """
    import os

    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "medgen-bench")


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``overrides``, recursing into nested mappings.

    A key of ``overrides`` absent from ``base`` is an error naming the key and the valid
    ones, so a typo in a suite's model config is never silently ignored.
    """
    out = dict(base)
    for key, value in overrides.items():
        if key not in base:
            valid = ", ".join(sorted(base))
            raise BenchError(f"unknown config key {key!r}; valid keys: {valid}")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            out[key] = merge_config(base[key], value)
        else:
            out[key] = value
    return out
