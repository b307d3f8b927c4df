"""Evaluation: stream the test split through the model, task by task, into metric objects.

Tasks follow from the model's capabilities and the dataset's modalities: ``recon`` for
single-modality data, ``A2A``/``B2B`` and ``A2B``/``B2A`` for paired data, and
``sample``. One pass over the test loader feeds every reconstruction and translation
task batch by batch, so no test set is ever held in memory. Predictions and targets are
mapped from the dataset's value range to ``[0, 1]`` (predictions clamped, and the count
recorded) before the metrics see them, so every metric uses ``data_range = 1``. Rows of
per-item metrics carry the seeded bootstrap 95% interval of their mean over test items.

Every reconstruction and translation task also stores a diagnostic row,
``input_dependence``: the spread of the outputs across test items over the spread of the
targets (see :class:`Spread`). A model whose outputs barely change with the input (a
collapsed posterior, a decoder that learnt the mean image) is flagged by it in the tables.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench_core import distributed as ddp
from bench_core.api import RECONSTRUCT, SAMPLE, TRANSLATE, BenchError, DataSpec
from bench_core.feeder import Computed
from bench_core.rows import ResultRow, input_dependence_row, metric_rows, throughput_row
from bench_core.timing import ThroughputMeter
from bench_core.torchutil import autocast, to_device


@dataclass(frozen=True)
class Task:
    """One evaluation task: ``source`` modality in, ``target`` modality compared against."""

    name: str
    kind: str  # reconstruct | translate | sample
    source: str | None
    target: str


def tasks_for(capabilities: frozenset[str], spec: DataSpec) -> list[Task]:
    """The evaluation tasks a model with ``capabilities`` can do on data with ``spec``."""
    tasks = []
    if spec.paired:
        a, b = spec.modalities
        if RECONSTRUCT in capabilities:
            tasks += [Task(f"{a}2{a}", RECONSTRUCT, a, a), Task(f"{b}2{b}", RECONSTRUCT, b, b)]
        if TRANSLATE in capabilities:
            tasks += [Task(f"{a}2{b}", TRANSLATE, a, b), Task(f"{b}2{a}", TRANSLATE, b, a)]
    elif RECONSTRUCT in capabilities:
        tasks.append(Task("recon", RECONSTRUCT, spec.modalities[0], spec.modalities[0]))
    if SAMPLE in capabilities:
        tasks.append(Task("sample", SAMPLE, None, spec.modalities[0]))
    return tasks


class Spread:
    """Streaming per-pixel spread across items: sqrt of the per-pixel variance, averaged over pixels.

    Sums are kept in float64 per pixel, so the memory is a few images, whatever the number
    of items; the result equals ``x.std(0, unbiased=False).pow(2).mean().sqrt()`` over all items.
    """

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add a batch ``(B, C, *spatial)``."""
        x = x.detach().to(torch.float64)
        if self.total is None:
            self.total, self.squares = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        self.total += x.sum(0)
        self.squares += (x * x).sum(0)
        self.n += x.shape[0]

    def compute(self) -> float:
        """The spread; 0 for fewer than two items."""
        if self.n < 2 or self.total is None or self.squares is None:
            return 0.0
        mean = self.total / self.n
        variance = (self.squares / self.n - mean * mean).clamp_min(0)
        return float(variance.mean().sqrt())


@dataclass
class EvalSettings:
    """Evaluation settings resolved from the suite."""

    device: torch.device
    precision: str = "fp32"
    batch_size: int = 16
    n_samples: int = 64
    temperature: float = 1.0
    grid_size: int = 8
    max_items: int | None = None
    save_images: bool = True
    seed: int = 0
    model_temperature: float | None = None  # passed to reconstruct/translate when set
    workers: int = 0


@dataclass
class EvalOutcome:
    """Metric rows for the store, per-file values for the eval JSON, and timings."""

    rows: list[ResultRow] = field(default_factory=list)
    per_file: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    grids: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def evaluate(
    model: torch.nn.Module,
    test: Dataset,
    spec: DataSpec,
    tasks: list[Task],
    metrics: dict[str, tuple[type, dict[str, Any]]],
    settings: EvalSettings,
    out_dir: Path,
    train: Dataset | None = None,
) -> EvalOutcome:
    """Run every task over the test split and return the metric rows.

    Args:
        metrics: metric name -> (metric class, options) as resolved from the suite.
        out_dir: the cell's folder; image folders and grids are written under it.
        train: the training split, streamed into the sample tasks' metrics that declare
            ``needs_train`` (memorisation); without it they report themselves unavailable.
    """
    outcome = EvalOutcome()
    lo, hi = spec.value_range
    model.eval()
    instances: dict[str, dict[str, Any]] = {}
    for task in tasks:
        instances[task.name] = {}
        for name, (cls, options) in metrics.items():
            if spec.dims not in cls.dims:
                outcome.notes.append(
                    f"metric {name} skipped: it supports dims {sorted(cls.dims)}, data is {spec.dims}D"
                )
                continue
            if task.kind == SAMPLE and cls.kind == "paired":
                continue  # samples have no ground-truth partner
            if task.kind != SAMPLE and getattr(cls, "needs_train", False):
                continue  # compares samples with the training set: sample tasks only
            instances[task.name][name] = cls(data_range=1.0, dims=spec.dims, **options)
    state = {t.name: _TaskState(t, settings.device) for t in tasks}
    if settings.model_temperature is not None and not takes_temperature(model):
        outcome.notes.append(
            f"the model's reconstruct/translate take no temperature: t={settings.model_temperature:g} "
            "applies to sampling only"
        )
    n_items = len(test) if settings.max_items is None else min(len(test), settings.max_items)  # type: ignore[arg-type]
    if n_items == 0:
        raise BenchError("the test split is empty: nothing to evaluate")
    sampler_gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    main = ddp.is_main()
    with torch.no_grad():
        for local in _shard_batches(test, n_items, settings):
            # Each rank runs reconstructions and translations on its shard; rank 0 gathers them.
            outputs: dict[str, torch.Tensor] = {}
            if local is not None:
                local = to_device(local, settings.device)
                for task in tasks:
                    if task.kind != SAMPLE:
                        meter = state[task.name].meter
                        with meter.measure(len(local["id"])), autocast(settings.device, settings.precision):
                            outputs[task.name] = _run_task(model, task, local, 0, settings, sampler_gen)
            batch, preds = _gather(local, outputs, settings.device)
            if not main or batch is None:
                continue
            ids = list(batch["id"])
            for task in tasks:
                st = state[task.name]
                if task.kind == SAMPLE:
                    # Samples are drawn against test images one for one, at most n_samples in all.
                    n = min(len(ids), settings.n_samples - st.items)
                    if n <= 0:
                        continue
                    with st.meter.measure(n), autocast(settings.device, settings.precision):
                        pred = _run_task(model, task, batch, n, settings, sampler_gen)
                else:
                    n, pred = len(ids), preds[task.name]
                st.items += n
                pred = pred.float()
                if not torch.isfinite(pred).all():
                    raise BenchError(f"task {task.name}: the model produced NaN or Inf values")
                target = batch[task.target][:n].float()
                if pred.shape != target.shape:
                    raise BenchError(
                        f"task {task.name}: model output shape {tuple(pred.shape)} differs from the "
                        f"target's {tuple(target.shape)}"
                    )
                pred01 = (pred - lo) / (hi - lo)
                st.clamped += int(((pred01 < 0) | (pred01 > 1)).sum())
                st.values_total += pred01.numel()
                pred01 = pred01.clamp(0, 1)
                target01 = _unit(target, lo, hi)
                for name, metric in instances[task.name].items():
                    values = metric.update(pred01, target01)
                    if values is not None:
                        per = st.per_file.setdefault(name, {})
                        per.update(zip(ids[:n], (float(v) for v in values.detach().cpu()), strict=True))
                if task.kind != SAMPLE:
                    st.pred_spread.update(pred01)
                    st.target_spread.update(target01)
                st.keep_grid(pred01, target01, batch, settings.grid_size, spec, lo, hi)
                if settings.save_images:
                    if task.kind == SAMPLE:  # samples have no input to be named after: number them
                        _save_images(out_dir / task.name, ids[:n], pred01, prefix="sample_", start=st.items - n)
                    else:
                        _save_images(out_dir / task.name, ids, pred01)
            if settings.save_images:
                for modality in spec.modalities:
                    folder = f"gt{modality}" if spec.paired else "gt"
                    _save_images(out_dir / folder, ids, _unit(batch[modality].float(), lo, hi))
    if not main:
        return outcome
    _feed_training_items(train, spec, tasks, instances, settings)
    for task in tasks:
        st = state[task.name]
        counters = {"pred_clamped": st.clamped, "pred_values": st.values_total}
        for name, metric in instances[task.name].items():
            result = Computed(name, metrics[name][0], metric.compute(), st.per_file.get(name))
            outcome.rows += metric_rows(task.name, result, counters)
            if result.per_item is not None:
                outcome.per_file.setdefault(task.name, {})[name] = {
                    "mean": result.value.value, "std": result.value.std, "n": result.value.n,
                    "per_file": result.per_item,
                }  # fmt: skip
        if task.kind != SAMPLE:
            spread = (st.pred_spread.compute(), st.target_spread.compute())
            outcome.rows.append(input_dependence_row(task.name, *spread, st.pred_spread.n))
        if st.meter.per_second is not None:
            timing = {"batch_size": settings.batch_size, "device": str(settings.device),
                      "precision": settings.precision, "protocol": f"model calls per batch: {st.meter.protocol}"}
            outcome.rows.append(throughput_row(task.name, "images_per_s", st.meter.per_second, st.meter.items, timing))
        if settings.save_images and st.grid_rows:
            path = out_dir / f"{task.name}_grid.png"
            _save_grid(path, st.grid_rows)
            outcome.grids[task.name] = path.name
    return outcome


class _TaskState:
    def __init__(self, task: Task, device: torch.device):
        self.task = task
        self.per_file: dict[str, dict[str, float]] = {}
        self.meter = ThroughputMeter(device, skip_first=1)  # the first batch pays for warm-up
        self.items = 0
        self.clamped = 0
        self.values_total = 0
        self.pred_spread, self.target_spread = Spread(), Spread()
        self.grid_rows: list[list[torch.Tensor]] = []  # columns of (gt, pred, |err|) or (source, sample)
        self._grid_count = 0

    def keep_grid(self, pred01, target01, batch, size: int, spec: DataSpec, lo: float, hi: float) -> None:
        take = min(size - self._grid_count, pred01.shape[0])
        if take <= 0:
            return
        for i in range(take):
            if self.task.kind == SAMPLE:
                column = [_view2d(pred01[i])]
            else:
                source = _unit(batch[self.task.source][i].float(), lo, hi)
                column = [_view2d(source)] if self.task.source != self.task.target else []
                column += [_view2d(target01[i]), _view2d(pred01[i]), _view2d((pred01[i] - target01[i]).abs())]
            self.grid_rows.append([c.cpu() for c in column])
        self._grid_count += take


def _feed_training_items(
    train: Dataset | None,
    spec: DataSpec,
    tasks: list[Task],
    instances: dict[str, dict[str, Any]],
    settings: EvalSettings,
) -> None:
    """Stream the training split's target images into the sample metrics that declare ``needs_train``.

    Images are mapped to ``[0, 1]`` like the targets and passed with their ids to ``update_train``.
    Rank 0 alone runs it, after the test pass, so no other rank waits on it in a collective; the
    split is not read when no metric asks.
    """
    takers = [(task, metric) for task in tasks if task.kind == SAMPLE
              for metric in instances[task.name].values() if getattr(metric, "needs_train", False)]  # fmt: skip
    if train is None or not takers:
        return
    lo, hi = spec.value_range
    with torch.no_grad():
        for batch in _loader(train, settings):
            batch = to_device(batch, settings.device)
            for task, metric in takers:
                metric.update_train(_unit(batch[task.target].float(), lo, hi), list(batch["id"]))


def validation_score(
    model: torch.nn.Module, data: Dataset, spec: DataSpec, task: Task, metric: Any, settings: EvalSettings
) -> float:
    """``metric`` of ``task`` over ``data`` (at most ``settings.max_items`` items): checkpoint selection.

    ``metric`` is a fresh metric instance (``data_range=1``); no images are written.
    """
    lo, hi = spec.value_range
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    seen = 0
    for batch in _loader(data, settings):
        if settings.max_items is not None:
            batch = {k: v[: settings.max_items - seen] for k, v in batch.items()}
        n = len(batch["id"])
        if n == 0:
            break
        seen += n
        batch = to_device(batch, settings.device)
        with autocast(settings.device, settings.precision):
            pred = _run_task(model, task, batch, n, settings, gen).float()
        metric.update(_unit(pred, lo, hi), _unit(batch[task.target][:n].float(), lo, hi))
    if seen == 0:
        raise BenchError("validation: the val split is empty; remove `validation:` or give the dataset a val split")
    value = float(metric.compute().value)
    if not np.isfinite(value):
        raise BenchError(f"validation: {task.name} {metric.name} is {value} (the model produced non-finite output?)")
    return value


def _shard_batches(data: Dataset, n_items: int, settings: EvalSettings):
    """This rank's batches of the first ``n_items`` items (every rank yields as many; ``None`` pads).

    One process reads items in order. Under torchrun rank r reads items r, r + W, r + 2W...,
    so the ranks' batches together hold each item once.
    """
    world, rank = ddp.world_size(), ddp.rank()
    mine = list(range(rank, n_items, world))
    per_rank = -(-n_items // world)  # the largest shard
    count = -(-per_rank // settings.batch_size)
    subset = mine if world > 1 or n_items < len(data) else None  # type: ignore[arg-type]
    loader = _loader(data if subset is None else torch.utils.data.Subset(data, subset), settings)
    it = iter(loader)
    for _ in range(count):
        yield next(it, None)


def _gather(local: dict[str, Any] | None, outputs: dict[str, torch.Tensor], device: torch.device):
    """Rank 0's view of a step: the ranks' batches and outputs joined in rank order (``None`` elsewhere)."""
    if ddp.world_size() == 1:
        return local, outputs
    cpu = None if local is None else ({k: v.cpu() if torch.is_tensor(v) else v for k, v in local.items()},
                                      {k: v.cpu() for k, v in outputs.items()})  # fmt: skip
    parts = [p for p in ddp.gather_to_main(cpu) or [] if p is not None]
    if not parts:
        return None, {}
    batch = {}
    for key, first in parts[0][0].items():
        pieces = [b[key] for b, _ in parts]
        batch[key] = torch.cat(pieces) if torch.is_tensor(first) else [x for piece in pieces for x in piece]
    preds = {k: torch.cat([o[k] for _, o in parts]) for k in parts[0][1]}
    return to_device(batch, device), to_device(preds, device)


def takes_temperature(model: torch.nn.Module) -> bool:
    """Whether the model's ``reconstruct``/``translate`` accept a ``temperature`` keyword."""
    return _class_takes_temperature(type(model))


@functools.cache
def _class_takes_temperature(cls: type) -> bool:
    # Per class, once: evaluation asks for every batch of every task.
    methods = [getattr(cls, m, None) for m in ("reconstruct", "translate")]
    return any(m is not None and "temperature" in inspect.signature(m).parameters for m in methods)


def _loader(data: Dataset, settings: EvalSettings) -> DataLoader:
    return DataLoader(
        data, batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers,
        pin_memory=settings.device.type == "cuda",
    )  # fmt: skip


def _unit(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The data range mapped to ``[0, 1]`` and clamped."""
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _run_task(model, task: Task, batch, n: int, settings: EvalSettings, gen: torch.Generator) -> torch.Tensor:
    t = settings.model_temperature
    kwargs = {"temperature": t} if t is not None and takes_temperature(model) else {}
    if task.kind == RECONSTRUCT:
        return model.reconstruct(batch[task.source], task.source, **kwargs)
    if task.kind == TRANSLATE:
        return model.translate(batch[task.source], task.source, task.target, **kwargs)
    return model.sample(n, temperature=settings.temperature if t is None else t, generator=gen)


def _view2d(x: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) image for display: 3D volumes show their three orthogonal centre slices."""
    if x.dim() == 4:
        c, d, h, w = x.shape
        size = max(d, h, w)
        planes = [x[:, d // 2], x[:, :, h // 2], x[:, :, :, w // 2]]
        padded = [torch.nn.functional.pad(p, (0, size - p.shape[-1], 0, size - p.shape[-2])) for p in planes]
        x = torch.cat(padded, dim=-1)
    if x.shape[0] not in (1, 3):
        x = x[:1]
    return x


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    arr = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def _save_images(folder: Path, ids: list[str], images01: torch.Tensor, prefix: str = "", start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, item_id in enumerate(ids):
        name = f"{prefix}{start + i:05d}" if prefix else Path(item_id).name
        Image.fromarray(_to_uint8(_view2d(images01[i]))).save(folder / f"{name}.png")


def _save_grid(path: Path, columns: list[list[torch.Tensor]]) -> None:
    """Items as columns, rows as (source,) ground truth, prediction, error; 2 px gaps."""
    rows = max(len(c) for c in columns)
    channels = max(t.shape[0] for c in columns for t in c)
    h = max(t.shape[-2] for c in columns for t in c)
    w = max(t.shape[-1] for c in columns for t in c)
    gap = 2
    canvas = torch.ones(channels, rows * (h + gap) - gap, len(columns) * (w + gap) - gap)
    for j, column in enumerate(columns):
        for i, tile in enumerate(column):
            tile = tile.expand(channels, -1, -1)
            y, x = i * (h + gap), j * (w + gap)
            canvas[:, y : y + tile.shape[-2], x : x + tile.shape[-1]] = tile
    Image.fromarray(_to_uint8(canvas)).save(path)
