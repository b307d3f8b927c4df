"""Evaluation: stream the test split through the model, task by task, into the metric feeders.

Tasks follow from the model's capabilities and the dataset's modalities: ``recon`` for
single-modality data, ``A2A``/``B2B`` and ``A2B``/``B2A`` for paired data, and
``sample``. One pass over the test loader feeds every reconstruction and translation
task batch by batch, so no test set is ever held in memory. Predictions and targets are
mapped from the value range of the modality they are (``DataSpec.range_of``) to ``[0, 1]``
(predictions clamped, and the count recorded) before the metrics see them, so every metric
uses ``data_range = 1``. Rows of per-item metrics carry the seeded bootstrap 95% interval of
their mean over test items.

Every reconstruction and translation task also stores a diagnostic row,
``input_dependence``: the spread of the outputs across test items over the spread of the
targets (see :class:`Spread`). A model whose outputs barely change with the input (a
collapsed posterior, a decoder that learnt the mean image) is flagged by it in the tables.

Under torchrun every rank runs the model on its shard of the test split; rank 0 gathers the
outputs and alone feeds the metrics, draws samples and writes images (:func:`evaluate`).
"""

from __future__ import annotations

import functools
import inspect
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench_core import distributed as ddp
from bench_core.api import RECONSTRUCT, SAMPLE, TRANSLATE, BenchError, DataSpec
from bench_core.feeder import MetricFeeder, build_metric
from bench_core.images import StripKeeper, save_grid, save_images, view2d
from bench_core.rows import ResultRow, input_dependence_row, throughput_row
from bench_core.timing import ThroughputMeter
from bench_core.torchutil import autocast, to_device


@dataclass(frozen=True)
class Task:
    """One evaluation task: ``source`` modality in, ``target`` modality compared against."""

    name: str
    kind: str  # reconstruct | translate | sample
    source: str | None
    target: str


def tasks_for(capabilities: frozenset[str], spec: DataSpec, declared: Iterable[str] | None = None) -> list[Task]:
    """The evaluation tasks a model with ``capabilities`` can do on data with ``spec``.

    ``declared``: the task roles the model does (its optional ``tasks`` attribute, see
    :data:`bench_core.api.TASK_ROLES`); ``None`` keeps every task of the capabilities.
    """
    roles: list[tuple[str, Task]] = []
    if spec.paired:
        a, b = spec.modalities
        if RECONSTRUCT in capabilities:
            roles += [("A2A", Task(f"{a}2{a}", RECONSTRUCT, a, a)), ("B2B", Task(f"{b}2{b}", RECONSTRUCT, b, b))]
        if TRANSLATE in capabilities:
            roles += [("A2B", Task(f"{a}2{b}", TRANSLATE, a, b)), ("B2A", Task(f"{b}2{a}", TRANSLATE, b, a))]
    elif RECONSTRUCT in capabilities:
        roles.append(("recon", Task("recon", RECONSTRUCT, spec.modalities[0], spec.modalities[0])))
    if SAMPLE in capabilities:
        roles.append(("sample", Task("sample", SAMPLE, None, spec.modalities[0])))
    keep = None if declared is None else frozenset(declared)
    return [task for role, task in roles if keep is None or role in keep]


def model_tasks(model_cls: type, spec: DataSpec) -> list[Task]:
    """The tasks of a model plugin class on ``spec``: its capabilities, narrowed by its ``tasks`` when declared."""
    return tasks_for(frozenset(model_cls.capabilities), spec, getattr(model_cls, "tasks", None))


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
    failed: dict[str, str] = field(default_factory=dict)  # task -> why it failed (its rows are left out)


class TaskFailed(BenchError):
    """A task's output cannot be scored (non-finite, wrong shape): that task fails, the others go on."""


@dataclass(frozen=True)
class EvalJob:
    """What to evaluate: a model (or a baseline) on a dataset split, for some tasks, with some metrics.

    ``metrics`` maps a metric's name (as the suite writes it) to its class and options. ``train``,
    the training split, is streamed into the sample tasks' metrics that declare ``needs_train``
    (memorisation); without it they report themselves unavailable.
    """

    model: torch.nn.Module
    spec: DataSpec
    tasks: list[Task]
    metrics: Mapping[str, tuple[type, Mapping[str, Any]]]
    test: Dataset
    train: Dataset | None = None


def evaluate(job: EvalJob, settings: EvalSettings, out_dir: Path) -> EvalOutcome:
    """Run every task of ``job`` over its test split and return the rows; images and grids go under ``out_dir``."""
    outcome = EvalOutcome()
    job.model.eval()
    states = [_TaskState(t, _task_feeder(job, t, outcome.notes), job.spec, settings.device) for t in job.tasks]
    if settings.model_temperature is not None and not takes_temperature(job.model):
        outcome.notes.append(
            f"the model's reconstruct/translate take no temperature: t={settings.model_temperature:g} "
            "applies to sampling only"
        )
    n_items = len(job.test) if settings.max_items is None else min(len(job.test), settings.max_items)  # type: ignore[arg-type]
    if n_items == 0:
        raise BenchError("the test split is empty: nothing to evaluate")
    run = _Pass(job, settings, out_dir, states, _Caller(job.model, settings))
    with torch.no_grad():
        for local in _shard_batches(job.test, n_items, settings):
            batch, preds = _gather(*_local_outputs(run, local), settings.device)
            if ddp.is_main() and batch is not None:
                _feed_batch(run, batch, preds)
    if not ddp.is_main():
        return outcome
    live = [state for state in states if state.failed is None]
    outcome.failed = {state.task.name: state.failed for state in states if state.failed is not None}
    for name in outcome.failed if settings.save_images else ():
        shutil.rmtree(out_dir / name, ignore_errors=True)  # images of the batches before it failed
    if not live:
        raise BenchError("every task failed: " + "; ".join(f"{k}: {v}" for k, v in outcome.failed.items()))
    _feed_training_items(job, live, settings)
    for state in live:
        _task_results(state, settings, out_dir, outcome)
    _save_nearest_training_images(job, live, settings, out_dir, outcome)
    return outcome


def to_unit(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The data range ``[lo, hi]`` mapped to ``[0, 1]`` and clamped."""
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def unit_of(spec: DataSpec, modality: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`to_unit` with the value range of ``modality`` (each modality of a pair may have its own)."""
    lo, hi = spec.range_of(modality)
    return functools.partial(to_unit, lo=lo, hi=hi)


class _Caller:
    """Calls a task's capability method: the suite's temperature when the model takes one, seeded samples."""

    def __init__(self, model: torch.nn.Module, settings: EvalSettings) -> None:
        t = settings.model_temperature
        self.model = model
        self.kwargs = {"temperature": t} if t is not None and takes_temperature(model) else {}
        self.sample_temperature = settings.temperature if t is None else t
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)

    def __call__(self, task: Task, batch: dict[str, Any], n: int) -> torch.Tensor:
        if task.kind == RECONSTRUCT:
            return self.model.reconstruct(batch[task.source], task.source, **self.kwargs)
        if task.kind == TRANSLATE:
            return self.model.translate(batch[task.source], task.source, task.target, **self.kwargs)
        return self.model.sample(n, temperature=self.sample_temperature, generator=self.generator)


class _TaskState:
    """One task's feeder, timing, counters, spreads and grid during a pass."""

    def __init__(self, task: Task, feeder: MetricFeeder, spec: DataSpec, device: torch.device) -> None:
        self.task, self.feeder = task, feeder
        self.range = spec.range_of(task.target)  # predictions are in the range of the modality they predict
        self.unit = unit_of(spec, task.target)
        self.source_unit = unit_of(spec, task.source) if task.source is not None else None
        self.meter = ThroughputMeter(device, skip_first=1)  # the first batch pays for warm-up
        self.items = 0
        self.clamped = 0
        self.values_total = 0
        self.pred_spread, self.target_spread = Spread(), Spread()
        self.grid_rows: list[list[torch.Tensor]] = []  # columns of (gt, pred, |err|) or (source, sample)
        self.strip = StripKeeper()  # the same few test items in every cell, for the report's comparison strip
        self.failed: str | None = None  # why the task failed; it is then neither called nor fed again

    def fail(self, exc: BaseException | str) -> None:
        """Record the task as failed with the error's first line (the pass goes on with the other tasks)."""
        if isinstance(exc, str):
            self.failed = exc
            return
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.failed = text if isinstance(exc, BenchError) else f"{type(exc).__name__}: {text}".rstrip(": ")

    def keep_grid(self, pred01: torch.Tensor, target01: torch.Tensor, batch: dict[str, Any], size: int) -> None:
        """Keep the first ``size`` items of the pass as grid columns."""
        take = min(size - len(self.grid_rows), pred01.shape[0])
        for i in range(max(take, 0)):
            if self.task.kind == SAMPLE:
                column = [view2d(pred01[i])]
            else:
                source = self.source_unit(batch[self.task.source][i].float())
                column = [view2d(source)] if self.task.source != self.task.target else []
                column += [view2d(target01[i]), view2d(pred01[i]), view2d((pred01[i] - target01[i]).abs())]
            self.grid_rows.append([c.cpu() for c in column])

    def keep_strip(self, pred01: torch.Tensor, target01: torch.Tensor, batch: dict[str, Any], ids: list[str]) -> None:
        """Offer a batch's items to the strip: input (translation only), target and output at display size."""

        def tiles(i: int) -> dict[str, torch.Tensor]:
            out = {"target": view2d(target01[i]), "output": view2d(pred01[i])}
            if self.task.source != self.task.target:
                out["input"] = view2d(self.source_unit(batch[self.task.source][i].float()))
            return out

        for i, item_id in enumerate(ids):
            self.strip.offer(item_id, functools.partial(tiles, i))


@dataclass
class _Pass:
    """One evaluation pass over the test split: the job, its settings and the state of each task."""

    job: EvalJob
    settings: EvalSettings
    out_dir: Path
    states: list[_TaskState]
    call: _Caller


def _task_feeder(job: EvalJob, task: Task, notes: list[str]) -> MetricFeeder:
    """Fresh instances of the metrics that apply to ``task`` (a note for each skipped for its dims)."""
    chosen = {}
    for name, (cls, options) in job.metrics.items():
        if job.spec.dims not in cls.dims:
            notes.append(f"metric {name} skipped: it supports dims {sorted(cls.dims)}, data is {job.spec.dims}D")
            continue
        if task.kind == SAMPLE and cls.kind == "paired":
            continue  # samples have no ground-truth partner
        if task.kind != SAMPLE and getattr(cls, "needs_train", False):
            continue  # compares samples with the training set: sample tasks only
        chosen[name] = (cls, build_metric(cls, options, job.spec.dims))
    return MetricFeeder(chosen)


def _local_outputs(run: _Pass, local: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """This rank's batch on the device and the outputs of its reconstruction and translation tasks."""
    if local is None:
        return None, {}
    settings = run.settings
    local = to_device(local, settings.device)
    outputs = {}
    for state in run.states:
        if state.task.kind != SAMPLE and state.failed is None:
            try:
                with state.meter.measure(len(local["id"])), autocast(settings.device, settings.precision):
                    outputs[state.task.name] = run.call(state.task, local, 0)
            except Exception as exc:  # a model may refuse or break on one task: the others still count
                state.fail(exc)
    return local, outputs


def _feed_batch(run: _Pass, batch: dict[str, Any], preds: dict[str, torch.Tensor]) -> None:
    """Rank 0: feed one gathered batch to every task (samples drawn here), then save its ground truth."""
    settings, ids = run.settings, list(batch["id"])
    for state in run.states:
        if state.failed is not None:
            continue
        if state.task.kind != SAMPLE:
            if state.task.name not in preds:
                state.fail("failed on another rank (its error is in that rank's log)")
            else:
                _feed_checked(run, state, batch, preds[state.task.name], ids)
            continue
        # Samples are drawn against test images one for one, at most n_samples in all.
        n = min(len(ids), settings.n_samples - state.items)
        if n > 0:
            try:
                with state.meter.measure(n), autocast(settings.device, settings.precision):
                    pred = run.call(state.task, batch, n)
            except Exception as exc:  # as for the other tasks: sampling failing keeps their rows
                state.fail(exc)
                continue
            _feed_checked(run, state, batch, pred, ids[:n])
    if settings.save_images:
        spec = run.job.spec
        for modality in spec.modalities:
            folder = f"gt{modality}" if spec.paired else "gt"
            save_images(run.out_dir / folder, ids, unit_of(spec, modality)(batch[modality].float()))


def _feed_checked(run: _Pass, state: _TaskState, batch: dict[str, Any], pred: torch.Tensor, ids: list[str]) -> None:
    """:func:`_feed_task`; a task whose output cannot be scored fails alone."""
    try:
        _feed_task(run, state, batch, pred, ids)
    except TaskFailed as exc:
        state.fail(exc)


def _feed_task(run: _Pass, state: _TaskState, batch: dict[str, Any], pred: torch.Tensor, ids: list[str]) -> None:
    """Check a task's predictions of ``ids``, map them to ``[0, 1]`` (counting clamps) and feed them."""
    task, n = state.task, len(ids)
    state.items += n
    pred = pred.float()
    if not torch.isfinite(pred).all():
        raise TaskFailed(f"task {task.name}: the model produced NaN or Inf values")
    target = batch[task.target][:n].float()
    if pred.shape != target.shape:
        raise TaskFailed(
            f"task {task.name}: model output shape {tuple(pred.shape)} differs from the target's {tuple(target.shape)}"
        )
    lo, hi = state.range
    pred01 = (pred - lo) / (hi - lo)
    state.clamped += int(((pred01 < 0) | (pred01 > 1)).sum())
    state.values_total += pred01.numel()
    pred01, target01 = pred01.clamp(0, 1), state.unit(target)
    state.feeder.update(pred01, target01, ids)
    if task.kind != SAMPLE:
        state.pred_spread.update(pred01)
        state.target_spread.update(target01)
    state.keep_grid(pred01, target01, batch, run.settings.grid_size)
    if task.kind != SAMPLE:  # samples have no test item to line up with
        state.keep_strip(pred01, target01, batch, ids)
    if run.settings.save_images:
        numbered = {"prefix": "sample_", "start": state.items - n} if task.kind == SAMPLE else {}
        save_images(run.out_dir / task.name, ids, pred01, **numbered)  # samples have no input to be named after


def _feed_training_items(job: EvalJob, states: list[_TaskState], settings: EvalSettings) -> None:
    """Stream the training split's target images into the sample metrics that declare ``needs_train``.

    Images are mapped to ``[0, 1]`` like the targets and passed with their ids to ``update_train``.
    Rank 0 alone runs it, after the test pass, so no other rank waits on it in a collective; the
    split is not read when no metric asks.
    """
    takers = [s for s in states if s.task.kind == SAMPLE and s.feeder.needs_train]
    if job.train is None or not takers:
        return
    with torch.no_grad():
        for batch in _loader(job.train, settings):
            batch = to_device(batch, settings.device)
            for state in takers:
                state.feeder.update_train(state.unit(batch[state.task.target].float()), batch["id"])


def _task_results(state: _TaskState, settings: EvalSettings, out_dir: Path, outcome: EvalOutcome) -> None:
    """A task's rows (metrics, input dependence, throughput), its per-item values and its grid, into ``outcome``."""
    task = state.task
    rows, computed = state.feeder.rows(task.name, {"pred_clamped": state.clamped, "pred_values": state.values_total})
    outcome.rows += rows
    for result in computed:
        if result.per_item is not None:
            value = result.value
            entry = {"mean": value.value, "std": value.std, "n": value.n, "per_file": result.per_item}
            outcome.per_file.setdefault(task.name, {})[result.name] = entry
        for name, entry in _sample_details(task, result, state.items).items():
            outcome.per_file.setdefault(task.name, {}).setdefault(name, {}).update(entry)
    if task.kind != SAMPLE:
        spread = (state.pred_spread.compute(), state.target_spread.compute())
        outcome.rows.append(input_dependence_row(task.name, *spread, state.pred_spread.n))
    if state.meter.per_second is not None:
        timing = {"batch_size": settings.batch_size, "device": str(settings.device),
                  "precision": settings.precision, "protocol": f"model calls per batch: {state.meter.protocol}"}
        meter = state.meter
        outcome.rows.append(throughput_row(task.name, "images_per_s", meter.per_second, meter.items, timing))
    if settings.save_images and state.grid_rows:
        path = out_dir / f"{task.name}_grid.png"
        save_grid(path, state.grid_rows)
        outcome.grids[task.name] = path.name
    # Kept even without save_images: a few small files per task, and the report's strip reads nothing else.
    if state.strip.kept:
        state.strip.save(out_dir / "strip" / task.name)


def _sample_details(task: Task, result: Any, n_samples: int) -> dict[str, dict[str, Any]]:
    """eval.json entries (metric row name -> entry) of a result's :attr:`MetricValue.item_details`, if any.

    The details of sample ``j`` are keyed ``sample_{j:05d}``, the name its image is saved under.
    """
    value = result.value
    parts = [(result.name, value)] + [(f"{result.name}.{k}", v) for k, v in value.components.items()]
    entries = {}
    for name, part in parts:
        details = getattr(part, "item_details", None)
        if details is None:
            continue
        if task.kind != SAMPLE or len(details) != n_samples:
            where = f"{len(details)} item details on task {task.name}"
            raise BenchError(f"metric {name}: {where}; item_details are one per generated sample ({n_samples}) "
                             "of the sample task")  # fmt: skip
        samples = {f"sample_{j:05d}": d for j, d in enumerate(details)}
        entries[name] = {"mean": part.value, "std": part.std, "n": part.n, "samples": samples}
    return entries


NEAREST_TRAIN_IMAGES = 8
"""Per memorisation metric, the samples closest to the training set whose nearest training image is saved."""


def _save_nearest_training_images(
    job: EvalJob, states: list[_TaskState], settings: EvalSettings, out_dir: Path, outcome: EvalOutcome
) -> None:
    """Save, as ``train_nearest/<id>.png``, the training items nearest to the samples closest to the training set.

    They come from the sample details in ``outcome`` (``train_id`` and ``train_index``, the item's
    position in the split, which is streamed in order), so the report shows each close sample beside
    its training item; an item whose id is not the one at that position is left out, with a note.
    """
    sample = next((s for s in states if s.task.kind == SAMPLE), None)
    if job.train is None or sample is None or not settings.save_images:
        return
    for index, train_id in sorted(_nearest_training_items(outcome.per_file.get(sample.task.name, {})).items()):
        item = job.train[index]
        if str(item["id"]) != train_id:
            outcome.notes.append(f"training item {index} is {item['id']!r}, not {train_id!r} as the sample details "
                                 "say: its image is not saved beside the closest samples")  # fmt: skip
            continue
        image = sample.unit(torch.as_tensor(item[sample.task.target]).float()[None])
        save_images(out_dir / "train_nearest", [train_id], image)


def _nearest_training_items(entries: Mapping[str, dict[str, Any]]) -> dict[int, str]:
    """``train_index -> train_id`` of the nearest training items of each metric's closest samples."""
    wanted: dict[int, str] = {}
    for entry in entries.values():
        closest = sorted((entry.get("samples") or {}).values(), key=lambda d: d["distance"])
        wanted.update({d["train_index"]: str(d["train_id"]) for d in closest[:NEAREST_TRAIN_IMAGES]
                       if isinstance(d.get("train_index"), int)})  # fmt: skip
    return wanted


def validation_score(job: EvalJob, settings: EvalSettings) -> float:
    """The one metric of ``job`` on its one task over ``job.test`` (at most ``settings.max_items`` items).

    Checkpoint selection: a fresh metric instance per call; no images are written.
    """
    (task,) = job.tasks
    ((name, (cls, options)),) = job.metrics.items()
    feeder = MetricFeeder({name: (cls, build_metric(cls, options, job.spec.dims))})
    unit = unit_of(job.spec, task.target)
    call = _Caller(job.model, settings)
    seen = 0
    for batch in _loader(job.test, settings):
        if settings.max_items is not None:
            batch = {k: v[: settings.max_items - seen] for k, v in batch.items()}
        n = len(batch["id"])
        if n == 0:
            break
        seen += n
        batch = to_device(batch, settings.device)
        with autocast(settings.device, settings.precision):
            pred = call(task, batch, n).float()
        feeder.update(unit(pred), unit(batch[task.target][:n].float()), batch["id"])
    if seen == 0:
        raise BenchError("validation: the val split is empty; remove `validation:` or give the dataset a val split")
    (result,) = feeder.compute()
    value = float(result.value.value)
    if not np.isfinite(value):
        raise BenchError(f"validation: {task.name} {cls.name} is {value} (the model produced non-finite output?)")
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
    # A task that failed on some rank is left out: rank 0 then records it as failed.
    preds = {k: torch.cat([o[k] for _, o in parts]) for k in parts[0][1] if all(k in o for _, o in parts)}
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
