"""A cell as a pipeline: prepare -> train -> evaluate -> record, plain functions over one context.

:func:`run_model_cell` runs a model cell through the four steps; :func:`run_baseline_cell`
fits a baseline and evaluates it like a model. Every step reads and extends one
:class:`CellContext`; the settings a step builds are built whole (nothing mutates settings
it was handed). Under torchrun every rank prepares, trains and evaluates (on its shard of
the test split); rank 0 (``RunContext.main``, decided once per run) alone saves weights,
writes files and makes rows, and decides for all ranks which weights exist
(:func:`bench_core.distributed.decide`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench_core import distributed as ddp
from bench_core import jsonvalues
from bench_core.api import BenchError, DataSpec
from bench_core.augment import PairedAugment
from bench_core.baselines import BASELINES
from bench_core.cells import BaselineCell, BuiltDataset, Cell, Datasets, SkipCell, model_config
from bench_core.checkpoints import BEST_WEIGHTS, TRAIN_STATE, WEIGHTS, checkpoint_key, load_weights, save_weights
from bench_core.evaluator import (
    EvalJob,
    EvalOutcome,
    EvalSettings,
    Task,
    evaluate,
    model_tasks,
    tasks_for,
    validation_score,
)
from bench_core.fileio import write_atomic
from bench_core.plugins import Registry, incompatibility_of
from bench_core.rows import ResultRow, baseline_row, model_rows, stage_rows
from bench_core.suite import Suite, Variant
from bench_core.torchutil import compile_children, seed_everything
from bench_core.trainer import StageReport, TrainSettings, run_stage


@dataclass
class RunContext:
    """What every cell of one ``bench run`` shares."""

    suite: Suite
    registry: Registry
    datasets: Datasets
    output_dir: Path
    device: torch.device
    main: bool  # rank 0: the one process that writes files and rows
    progress: bool = True
    log: Callable[[str], None] = print


@dataclass
class CellContext:
    """One model cell on its way through the pipeline."""

    run: RunContext
    cell: Cell
    data: BuiltDataset
    model_cls: type
    model_dist: str  # the distribution that provides the model plugin
    config: dict[str, Any]
    tasks: list[Task]
    model: torch.nn.Module
    checkpoint: str  # the key of the cell's weights in the checkpoint store
    details: dict[str, Any]
    rows: list[ResultRow] = field(default_factory=list)  # training rows, then evaluation rows (rank 0)
    outcomes: list[tuple[int, Variant, Path, EvalOutcome]] = field(default_factory=list)  # rank 0
    notes: list[str] = field(default_factory=list)  # what a reader of the cell must know (variants not run...)
    model_values: dict[str, float] = field(default_factory=dict)  # the model's own metrics (rank 0)

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    @property
    def ckdir(self) -> Path:
        return self.run.output_dir / "checkpoints" / self.checkpoint

    @property
    def cell_dir(self) -> Path:
        return self.run.output_dir / "cells" / slug(self.cell.id)


def run_model_cell(run: RunContext, cell: Cell) -> tuple[list[ResultRow], dict[str, Any]]:
    """Prepare, train (or load), evaluate and record one model cell; rows are empty off rank 0."""
    ctx = prepare(run, cell)
    train(ctx)
    evaluate_variants(ctx)
    return record(ctx)


# -- prepare --------------------------------------------------------------------------------------
def prepare(run: RunContext, cell: Cell) -> CellContext:
    """Build the cell's dataset and model; raise :class:`SkipCell` when the model cannot serve the data."""
    data = run.datasets.get(cell.dataset)
    spec = data.spec
    registered = run.registry.get("model", cell.model.plugin)
    model_cls = registered.cls
    if spec.dims not in model_cls.dims:
        raise SkipCell(f"{model_cls.name} handles {sorted(model_cls.dims)}D data; {cell.dataset.label} is {spec.dims}D")
    config = model_config(model_cls, cell.model)
    reason = incompatibility_of(model_cls, spec, config)
    if reason:
        raise SkipCell(reason)
    tasks = model_tasks(model_cls, spec)
    if not tasks:
        raise SkipCell(f"{model_cls.name} has no capability or task usable on {cell.dataset.label}")
    seed_everything(cell.seed, run.suite.deterministic)
    model = model_cls(config, spec).to(run.device)
    compiled = compile_children(model) if run.suite.compile and run.device.type == "cuda" else []
    checkpoint = checkpoint_key(_weights_identity(run.suite, cell, model_cls, config, data))
    details: dict[str, Any] = {"config": config, "checkpoint": checkpoint, "spec": spec_dict(spec), "stages": []}
    if run.suite.compile:
        details["compile"] = compiled or (
            f"not applied: torch.compile is a CUDA option here, device is {run.device} (on the CPU it is wrong for "
            "the EMA VQ models and took longer than it saved in tiny cells: docs/performance.md)"
        )
    return CellContext(run, cell, data, model_cls, registered.source.distribution, config, tasks, model,
                       checkpoint, details)  # fmt: skip


def _weights_identity(suite: Suite, cell: Cell, model_cls: type, config: dict, data: BuiltDataset) -> dict[str, Any]:
    """What determines a cell's trained weights: the parts of its checkpoint key."""
    parts = {
        "model": model_cls.name, "version": model_cls.version, "config": config,
        "data": data.fingerprint, "dataset": [cell.dataset.plugin, cell.dataset.options], "spec": spec_dict(data.spec),
        "seed": cell.seed,
        "budget": cell.model.budget.model_dump(mode="json", exclude_none=True), "precision": suite.precision,
    }  # fmt: skip
    # Only when set, so checkpoints trained before these options existed keep their keys.
    if cell.dataset.augment:
        parts["augment"] = cell.dataset.augment
    if suite.validation is not None:
        parts["validation"] = suite.validation.model_dump(mode="json")
    return parts


# -- train ----------------------------------------------------------------------------------------
def train(ctx: CellContext) -> None:
    """Load the cell's weights (a suite's ``load:`` file, or the checkpoint store), else train every stage."""
    load = ctx.cell.model.load
    if load is not None:
        load_weights(ctx.model, load, ctx.cell.model.load_format)
        ctx.details["weights"] = f"loaded from {load}"
        return
    if (ctx.ckdir / WEIGHTS).exists():
        load_weights(ctx.model, ctx.ckdir / WEIGHTS)
        ctx.details["weights"] = f"checkpoint store {ctx.checkpoint}"
        return
    split = ctx.data.dataset.split("train")
    stages = ctx.model.stages()
    previous: dict[str, Any] | None = None  # the optimiser state the previous stage ended with
    for index, stage in enumerate(stages):
        settings = _train_settings(ctx, stage, previous, last=index == len(stages) - 1)
        report = run_stage(ctx.model, stage, split, settings, ctx.ckdir / f"{index:02d}-{TRAIN_STATE}")
        previous = report.optimizer_state
        ctx.details["stages"].append({k: v for k, v in report.__dict__.items() if k != "optimizer_state"})
        if ctx.run.main:
            ctx.run.log(_stage_line(ctx.cell, report))
        batch_size = settings.batch_size or stage.batch_size
        ctx.rows += stage_rows(stage.name, report, str(ctx.run.device), ctx.run.suite.precision, batch_size)
    if ctx.run.main:
        meta = {"cell": ctx.cell.id, "config": ctx.config, "fingerprint": ctx.data.fingerprint}
        save_weights(ctx.model, ctx.ckdir, meta)
        for stale in ctx.ckdir.glob(f"*-{TRAIN_STATE}"):
            stale.unlink()
    ctx.details["weights"] = f"trained, saved as checkpoint {ctx.checkpoint}"


def _train_settings(ctx: CellContext, stage: Any, previous: dict[str, Any] | None, last: bool) -> TrainSettings:
    """How the engine runs ``stage``: the suite's budget for it; validation on the ``last`` stage when asked."""
    suite, budget = ctx.run.suite, ctx.cell.model.budget.for_stage(stage.name)
    validation = _validation(ctx) if last and suite.validation is not None else {}
    return TrainSettings(
        device=ctx.run.device, precision=suite.precision, seed=ctx.cell.seed,
        steps=budget.steps, epochs=budget.epochs, batch_size=budget.batch_size,
        accumulate=budget.accumulate, checkpoint_every=budget.checkpoint_every,
        progress=ctx.run.progress, label=ctx.cell.id, num_workers=suite.workers,
        augment=PairedAugment(ctx.cell.dataset.augment, ctx.spec.modalities, _lows(ctx.spec)) or None,
        initial_optimizer=previous if stage.continue_optimizer else None, **validation,
    )  # fmt: skip


def _validation(ctx: CellContext) -> dict[str, Any]:
    """The validation fields of :class:`TrainSettings`: score on the val split, keep the best weights."""
    val = ctx.run.suite.validation
    assert val is not None
    task = next((t for t in ctx.tasks if t.name == val.task), None) if val.task else ctx.tasks[0]
    if task is None:
        raise BenchError(
            f"validation.task {val.task!r} is not a task of {ctx.cell.model.label} on {ctx.cell.dataset.label}; "
            f"its tasks: {', '.join(t.name for t in ctx.tasks)}"
        )
    metric_cls = ctx.run.registry.get("metric", val.metric).cls
    if task.kind == "sample" and metric_cls.kind == "paired":
        raise BenchError(f"validation: {val.metric} compares pairs, and task {task.name} has no targets")
    job = EvalJob(ctx.model, ctx.spec, [task], {val.metric: (metric_cls, val.options)}, ctx.data.dataset.split("val"))
    settings = EvalSettings(
        device=ctx.run.device, precision=ctx.run.suite.precision, batch_size=val.batch_size, max_items=val.max_items,
        seed=ctx.cell.seed, model_temperature=val.temperature, workers=ctx.run.suite.workers,
    )  # fmt: skip
    return {
        "validate": functools.partial(validation_score, job, settings),
        "validate_every": val.every_steps, "validate_every_epochs": val.every_epochs,
        "validate_key": f"val_{task.name}_{val.metric}",
        "validate_higher_is_better": bool(metric_cls.higher_is_better), "best_path": ctx.ckdir / BEST_WEIGHTS,
    }  # fmt: skip


# -- evaluate -------------------------------------------------------------------------------------
def evaluate_variants(ctx: CellContext) -> None:
    """Evaluate every variant of the suite (weights x temperature); the first is the headline.

    Every rank evaluates its shard of the test split; rank 0 gathers, computes and keeps the outcomes.
    """
    for index, variant in enumerate(ctx.run.suite.evaluation.variants):
        cell = ctx.cell
        latest = cell.model.load or ctx.ckdir / WEIGHTS
        weights = Path(ctx.ckdir / BEST_WEIGHTS if variant.checkpoint == "best" else latest)
        if not ddp.decide(weights.exists):  # rank 0 wrote the weights
            where = f"weights loaded from {cell.model.load}" if cell.model.load else "no best checkpoint saved"
            ctx.notes.append(f"variant {variant.label} not evaluated: {where}")
            continue
        if ctx.run.main:  # a suite's load: file keeps its declared format; the store's files are ours
            fmt = cell.model.load_format if cell.model.load is not None and weights == latest else "auto"
            load_weights(ctx.model, weights, fmt)
        ddp.broadcast_module(ctx.model)  # rank 0 read the weights: the others take them from it
        out_dir = ctx.cell_dir if index == 0 else ctx.cell_dir / "variants" / variant.label
        job = EvalJob(ctx.model, ctx.spec, ctx.tasks, metric_classes(ctx.run), ctx.data.dataset.split("test"),
                      ctx.data.dataset.split("train"))  # fmt: skip
        outcome = evaluate(job, eval_settings(ctx.run, cell.seed, variant.temperature), out_dir)
        if not ctx.run.main:
            continue
        ctx.outcomes.append((index, variant, out_dir, outcome))
        notes = outcome.notes + [f"task {task} failed: {why}" for task, why in outcome.failed.items()]
        ctx.notes += [n if index == 0 else f"{variant.label}: {n}" for n in notes]
        if index == 0:  # the headline: the model's own metrics, of the same weights
            ctx.model_values = _model_values(ctx)


def _model_values(ctx: CellContext) -> dict[str, float]:
    """The model's own ``evaluation_metrics`` (ELBO, codebook usage...) on the test split, if it has them."""
    extra = getattr(ctx.model, "evaluation_metrics", None)
    if extra is None:
        return {}
    with torch.no_grad():
        return extra(DataLoader(ctx.data.dataset.split("test"), batch_size=ctx.run.suite.evaluation.batch_size))


def metric_classes(run: RunContext) -> dict[str, tuple[type, dict[str, Any]]]:
    """The suite's metrics: name -> (plugin class, options)."""
    return {m.plugin: (run.registry.get("metric", m.plugin).cls, m.options) for m in run.suite.metrics}


def eval_settings(run: RunContext, seed: int, model_temperature: float | None = None) -> EvalSettings:
    """The suite's evaluation settings for a cell of ``seed`` (and a variant's temperature)."""
    ev = run.suite.evaluation
    return EvalSettings(
        device=run.device, precision=run.suite.precision, batch_size=ev.batch_size, n_samples=ev.n_samples,
        temperature=ev.temperature, grid_size=ev.grid_size, max_items=ev.max_items,
        save_images=ev.save_images, seed=seed, model_temperature=model_temperature, workers=run.suite.workers,
    )  # fmt: skip


# -- record ---------------------------------------------------------------------------------------
def record(ctx: CellContext) -> tuple[list[ResultRow], dict[str, Any]]:
    """Rank 0: the cell's rows (training, then each variant's, the model's own after the headline's) and files."""
    details = ctx.details
    if not ctx.run.main:
        return [], details
    rows: list[ResultRow] = []
    for index, variant, out_dir, outcome in ctx.outcomes:
        suffix = "" if index == 0 else f"@{variant.label}"
        rows += [row.replace(task=row.task + suffix).with_provenance(variant=variant.model_dump(mode="json"))
                 for row in outcome.rows]  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "eval.json", jsonvalues.dumps(outcome.per_file, indent=1))
        if index == 0:
            rows += model_rows(ctx.model_values, ctx.model_cls.name)
            details.update(cell_dir=str(ctx.cell_dir.relative_to(ctx.run.output_dir)), grids=outcome.grids)
            if outcome.failed:  # the other tasks' rows are kept; the runner marks the cell with these
                details["failed_tasks"] = dict(outcome.failed)
    if not rows:
        raise BenchError("no evaluation variant could run: " + "; ".join(ctx.notes))
    details["notes"] = ctx.notes
    details["variants"] = [v.model_dump(mode="json") for v in ctx.run.suite.evaluation.variants]
    identity = {"model_version": ctx.model_cls.version, "model_dist": ctx.model_dist}
    return [row.with_provenance(**identity) for row in [*ctx.rows, *rows]], details


# -- baselines ------------------------------------------------------------------------------------
def run_baseline_cell(run: RunContext, cell: BaselineCell) -> tuple[list[ResultRow], dict[str, Any]]:
    """Fit a baseline on the training split and score it on the test split like a model; rows only on rank 0."""
    data = run.datasets.get(cell.dataset)
    spec = data.spec
    baseline = next(cls for cls in BASELINES if cls.name == cell.baseline)()
    tasks = [t for t in tasks_for(baseline.capabilities, spec) if t.name in cell.tasks]
    baseline.fit(data.dataset.split("train"), spec, run.suite.evaluation.batch_size)
    cell_dir = run.output_dir / "cells" / slug(cell.id)
    job = EvalJob(baseline, spec, tasks, metric_classes(run), data.dataset.split("test"))
    outcome = evaluate(job, eval_settings(run, cell.seed), cell_dir)
    if not run.main:
        return [], {}
    # A baseline's metric values only: no timings or diagnostics.
    rows = [baseline_row(r, baseline.settings()) for r in outcome.rows if r.kind == "metric"]
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(cell_dir / "eval.json", jsonvalues.dumps(outcome.per_file, indent=1))
    details = {
        "baseline": baseline.settings(), "description": baseline.description, "spec": spec_dict(spec),
        "cell_dir": str(cell_dir.relative_to(run.output_dir)), "grids": outcome.grids, "notes": outcome.notes,
    }  # fmt: skip
    return rows, details


# -- helpers --------------------------------------------------------------------------------------
def spec_dict(spec: DataSpec) -> dict[str, Any]:
    """A dataset's spec as stored with its cells (and shown in the report).

    ``ranges`` (one per modality) only where the modalities' ranges differ (``value_range`` is
    then ``None``), so the checkpoint keys of specs with one range stay what they were.
    """
    out = {
        "modalities": list(spec.modalities), "channels": list(spec.channels), "dims": spec.dims,
        "shape": list(spec.shape), "value_range": list(spec.value_range) if spec.value_range else None,
        "splits": dict(spec.split_sizes), "description": spec.description,
    }  # fmt: skip
    if spec.value_range is None:
        out["ranges"] = {m: list(spec.range_of(m)) for m in spec.modalities}
    return out


def _lows(spec: DataSpec) -> float | dict[str, float]:
    """What a crop reads outside the image: the low end of the value range (of each modality, when they differ)."""
    if spec.value_range is not None:
        return spec.value_range[0]
    return {m: spec.range_of(m)[0] for m in spec.modalities}


def slug(text: str) -> str:
    """``text`` as one folder name (a cell id's slashes and other characters become ``__``)."""
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in text)


def _stage_line(cell: Cell, report: StageReport) -> str:
    last = report.curve[-1].get("loss") if report.curve else None
    speed = f", {report.images_per_second:.1f} images/s" if report.images_per_second else ""
    resumed = f", resumed at step {report.resumed_from}" if report.resumed_from else ""
    loss = f", final loss {last:.4g}" if last is not None else ""
    return (
        f"  {cell.id} stage {report.stage}: {report.steps} steps in {report.seconds:.1f} s{speed}{loss}"
        f"{resumed}, {report.skipped} skipped"
    )
