"""The runner: expands a suite into model x dataset x seed cells and runs each one.

A cell builds its dataset and model through the plugin registry, loads or trains the
model (checkpoint store), evaluates it, and commits its rows to the results store in
one transaction. A cell that raises, or whose loss stays non-finite, is recorded as
failed and the others go on; an incompatible pair is recorded as skipped with the
reason. Finished cells are never redone, so an interrupted suite continues where it
stopped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench_core.api import BenchError, cache_dir, merge_config
from bench_core.fileio import remove_stale_temporaries, write_atomic
from bench_core.plugins import Registry
from bench_core.rows import ResultRow, baseline_row, model_rows, stage_rows
from bench_core.suite import DatasetEntry, ModelEntry, Suite


@dataclass(frozen=True)
class Cell:
    """One model x dataset x seed combination of a suite."""

    model: ModelEntry
    dataset: DatasetEntry
    seed: int
    kind: ClassVar[str] = "model"

    @property
    def label(self) -> str:
        """The row label of the cell's model in tables."""
        return self.model.label

    @property
    def id(self) -> str:
        """``model/dataset/seedN``: what ``--only``, ``include`` and ``exclude`` match."""
        return f"{self.model.label}/{self.dataset.label}/seed{self.seed}"


@dataclass(frozen=True)
class BaselineCell:
    """A baseline (see :mod:`bench_core.baselines`) on one dataset: fitted and evaluated, never trained."""

    baseline: str
    dataset: DatasetEntry
    tasks: tuple[str, ...]
    seed: int = 0
    kind: ClassVar[str] = "baseline"

    @property
    def label(self) -> str:
        """``baseline:<name>``: the row label in tables."""
        return f"baseline:{self.baseline}"

    @property
    def id(self) -> str:
        """``baseline:<name>/<dataset>``."""
        return f"{self.label}/{self.dataset.label}"


class SkipCell(Exception):
    """Raised inside a cell when the model cannot serve the dataset."""


def plan(suite: Suite, only: list[str] | None = None) -> list[Cell]:
    """The cells of ``suite`` after ``include``/``exclude`` and ``--only`` (glob patterns)."""
    cells = [Cell(m, d, s) for m in suite.models for d in suite.datasets for s in suite.seeds]

    def keep(cell: Cell) -> bool:
        if suite.include and not any(fnmatch.fnmatch(cell.id, p) for p in suite.include):
            return False
        if any(fnmatch.fnmatch(cell.id, p) for p in suite.exclude):
            return False
        return not only or any(fnmatch.fnmatch(cell.id, p) for p in only)

    return [c for c in cells if keep(c)]


def embedded_root(cls: type, n: int, seed: int) -> Path:
    """The folder holding ``cls``'s embedded data of size ``n`` and ``seed``, written on first use."""
    make = getattr(cls, "make_embedded", None)
    if make is None:
        raise BenchError(f"dataset plugin {cls.name!r} cannot synthesise embedded data; give `root:` a data folder")
    root = cache_dir() / "embedded" / f"{cls.name}-v{cls.version}-n{n}-seed{seed}"
    if (root / ".complete").exists():
        return root
    remove_stale_temporaries(root.parent)  # leftovers of syntheses killed before their rename
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp, n=n, seed=seed)
    (tmp / ".complete").write_text("ok\n")
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class Runner:
    """Runs the cells of one suite against one results store."""

    def __init__(
        self,
        suite: Suite,
        registry: Registry,
        output_dir: Path | None = None,
        progress: bool = True,
        argv: list[str] | None = None,
        log=print,
    ):
        self.suite = suite
        self.registry = registry
        self.output_dir = Path(output_dir or suite.resolved_output_dir)
        self.progress = progress
        self.argv = argv or []
        self.log = log
        self._datasets: dict[str, tuple[Any, Any, str]] = {}

    # -- checks before any work --------------------------------------------------------------
    def preflight(self, cells: list[Cell]) -> None:
        """Check everything that can be checked before any work; fail naming each problem.

        Plugins, configs and params, data folders, dataset and metric options (unknown keys
        with the nearest known one), the splits a cell needs (empty or missing), validation's
        val split, and each model built from its config on its dataset's spec on the meta
        device (no memory, no weights), so an impossible config fails here, not after training.
        """
        from bench_core.suite import unmet_requirements

        problems = [f"requires: {p}" for p in unmet_requirements(self.suite.requires)]
        models_ok = {}
        for entry in {c.model.label: c.model for c in cells}.values():
            try:
                cls = self.registry.get("model", entry.plugin).cls
                models_ok[entry.label] = (cls, self.model_config(cls, entry))
            except BenchError as exc:
                problems.append(f"models[{entry.label}]: {exc}")
            if entry.load is not None and not entry.load.exists():
                problems.append(f"models[{entry.label}].load: checkpoint file not found: {entry.load}")
        specs = {}
        for entry in {c.dataset.label: c.dataset for c in cells}.values():
            problem = self._dataset_problem(entry, [c for c in cells if c.dataset.label == entry.label])
            if problem:
                problems.append(f"datasets[{entry.label}]{problem}")
            else:
                specs[entry.label] = self._dataset(entry)[1]
        for entry in self.suite.metrics:
            try:
                cls = self.registry.get("metric", entry.plugin).cls
            except BenchError as exc:
                problems.append(f"metrics[{entry.plugin}]: {exc}")
                continue
            if problem := unknown_options(cls, entry.options, exclude=("data_range", "dims")):
                problems.append(f"metrics[{entry.plugin}].options: {problem}")
        pairs = {(c.model.label, c.dataset.label) for c in cells}
        for model, dataset in sorted(p for p in pairs if p[0] in models_ok and p[1] in specs):
            if problem := _build_problem(*models_ok[model], specs[dataset]):
                problems.append(f"models[{model}] on {dataset}: {problem}")
        if problems:
            where = self.suite.source_path or self.suite.name
            unique = list(dict.fromkeys(problems))
            raise BenchError(f"{where}: cannot run this suite:\n" + "\n".join(f"  {p}" for p in unique))

    def _dataset_problem(self, entry: DatasetEntry, cells: list[Cell]) -> str | None:
        """What stops ``entry`` from serving ``cells`` (``.key: message``), or ``None``."""
        try:
            cls = self.registry.get("dataset", entry.plugin).cls
        except BenchError as exc:
            return f": {exc}"
        if not entry.is_embedded and not Path(entry.root).is_dir():
            hint = getattr(cls, "obtain", "")
            return f".root: data folder {entry.root!r} does not exist" + (f"; {hint}" if hint else "")
        if problem := unknown_options(cls, entry.options, exclude=("root",)):
            return f".options: {problem}"
        try:
            spec = self._dataset(entry)[1]
        except BenchError as exc:
            return f": {exc}"
        needed = {"test": "evaluation"}
        if any(c.model.load is None for c in cells):
            needed["train"] = "training"
        if self.suite.validation is not None:
            needed["val"] = "validation:"
        empty = [f"{split} (needed by {why})" for split, why in needed.items() if not spec.split_sizes.get(split)]
        if empty and spec.split_sizes:
            return f": empty or missing split {', '.join(empty)} under {entry.root}"
        return None

    @staticmethod
    def model_config(cls: type, entry: ModelEntry) -> dict[str, Any]:
        """The named config of ``entry`` (or the model's default) merged with its params."""
        name = entry.config or cls.default_config
        if name not in cls.configs:
            raise BenchError(f"model {cls.name!r} has no config {name!r}; configs: {', '.join(sorted(cls.configs))}")
        try:
            return merge_config(cls.configs[name], entry.params)
        except BenchError as exc:
            raise BenchError(f"params of config {name!r}: {exc}") from None

    def cell_key(self, cell: Cell | BaselineCell) -> str:
        """A stable key of everything that determines a cell's results (resume identity).

        It holds the suite's entries as written, and what they resolve to: the model's
        merged config and plugin version, the dataset plugin's version and the data's
        fingerprint, and each metric plugin's version. Editing any of them, or replacing the
        data under the same root, makes a new cell; the old one is superseded, not mixed in.
        """
        from bench_core.checkpoints import checkpoint_key

        ds_cls = self.registry.get("dataset", cell.dataset.plugin).cls
        parts: dict[str, Any] = {
            "suite": self.suite.name, "dataset": cell.dataset.model_dump(mode="json"),
            "dataset_version": ds_cls.version, "data": self._fingerprint(cell.dataset), "seed": cell.seed,
            "precision": self.suite.precision,
            "metrics": [[m.model_dump(mode="json"), self.registry.get("metric", m.plugin).cls.version]
                        for m in self.suite.metrics],
            "evaluation": self.suite.evaluation.model_dump(mode="json"),
        }  # fmt: skip
        if isinstance(cell, BaselineCell):
            from bench_core import baselines

            parts.update(baseline=cell.baseline, baseline_version=baselines.VERSION, tasks=list(cell.tasks))
        else:
            model_cls = self.registry.get("model", cell.model.plugin).cls
            parts.update(model=cell.model.model_dump(mode="json"), model_version=model_cls.version,
                         config=self.model_config(model_cls, cell.model))  # fmt: skip
        return checkpoint_key(parts)

    def _fingerprint(self, entry: DatasetEntry) -> str:
        try:
            return self._dataset(entry)[2]
        except BenchError:  # the cell fails with this error when it runs; its key must still be stable
            return "unreadable"

    def baseline_cells(self, cells: list[Cell]) -> list[BaselineCell]:
        """The baselines of each dataset of ``cells`` that share a task with one of its models."""
        from bench_core.baselines import BASELINES
        from bench_core.evaluator import tasks_for

        out = []
        datasets = {c.dataset.label: c.dataset for c in cells}
        for label, entry in datasets.items():
            try:
                spec = self._dataset(entry)[1]
            except BenchError:
                continue  # its cells fail with the reason
            model_tasks = {
                t.name
                for c in cells if c.dataset.label == label
                for t in tasks_for(frozenset(self.registry.get("model", c.model.plugin).cls.capabilities), spec)
            }  # fmt: skip
            for cls in BASELINES:
                tasks = tuple(t.name for t in tasks_for(cls.capabilities, spec) if t.name in model_tasks)
                if tasks and cls().incompatibility(spec) is None:
                    out.append(BaselineCell(cls.name, entry, tasks))
        return out

    # -- running -----------------------------------------------------------------------------
    def run(self, cells: list[Cell]) -> dict[str, int]:
        """Run ``cells``; return counts by status (done, failed, skipped, cached, busy).

        Under torchrun every rank trains each cell; rank 0 alone claims cells, evaluates,
        and writes files and rows, and broadcasts its decisions to the others.
        """
        from bench_core import distributed as ddp
        from bench_core.provenance import environment
        from bench_core.store import ResultsStore
        from bench_core.torchutil import resolve_device

        self.preflight(cells)
        device = ddp.init_from_env(self.suite.device) or resolve_device(self.suite.device)
        main = ddp.is_main()
        run_id = ddp.broadcast_object(time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
        env = {**environment(str(device), self.suite.source_path), "world_size": ddp.world_size()}
        store = None
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            store = ResultsStore(self.output_dir)
            store.start_run(run_id, self.suite.name, self.suite.source_hash, self.argv, env)
            source = self.suite.source_path
            write_atomic(self.output_dir / "suite.yaml", source.read_text() if source else "")
            self.registry.notify("bench_run_start", suite=self.suite, output_dir=str(self.output_dir))
        summary = {"done": 0, "failed": 0, "skipped": 0, "cached": 0, "busy": 0}
        try:
            work = [*self.baseline_cells(cells), *cells]
            if store is not None:
                everything = plan(self.suite)
                current = [self.cell_key(c) for c in [*self.baseline_cells(everything), *everything]]
                store.record_plan(self.suite.name, run_id, current)
            for cell in work:
                key = self.cell_key(cell)
                claim = None
                if store is not None:
                    claim = store.claim_cell(
                        key, run_id, self.suite.name, cell.label, cell.dataset.label, cell.seed, cell.kind
                    )
                claim = ddp.broadcast_object(claim)
                if claim in ("done", "busy"):
                    summary["cached" if claim == "done" else "busy"] += 1
                    if claim == "done":
                        self.log(f"= {cell.id}: finished in an earlier run (kept)")
                    else:
                        holder = store.holder(key) if store is not None else "another process"
                        self.log(f"~ {cell.id}: left undone, run by {holder}")
                    continue
                with store.heartbeat(key) if store is not None else contextlib.nullcontext():
                    status, reason, details, rows = self._run_cell(cell, key, device, env)
                ddp.barrier()  # the other ranks wait while rank 0 evaluates
                summary[status] += 1
                if store is not None:
                    for row in store.finish_cell(key, status, reason, details, rows):
                        self.registry.notify("bench_result_written", row=row.as_dict())
                    self.log(_cell_line(cell, status, reason, rows))
        finally:
            if store is not None:
                store.finish_run(run_id)
                self.registry.notify(
                    "bench_run_end", suite=self.suite, output_dir=str(self.output_dir), summary=summary
                )
                store.close()
        return summary

    @staticmethod
    def _failure() -> tuple[str, str, dict, list]:
        """The failed-cell record of the exception being handled."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, BenchError):
            return "failed", _short(str(exc)), {"error": str(exc)}, []
        tb = traceback.format_exc()
        return "failed", _short(f"{type(exc).__name__}: {exc}"), {"error": str(exc), "traceback": tb}, []

    def _dataset(self, entry: DatasetEntry) -> tuple[Any, Any, str]:
        if entry.label not in self._datasets:
            cls = self.registry.get("dataset", entry.plugin).cls
            embedded = entry.embedded
            root = embedded_root(cls, embedded.n, embedded.seed) if entry.is_embedded else Path(entry.root)
            dataset = cls(root, **entry.options)
            self._datasets[entry.label] = (dataset, dataset.spec(), dataset.fingerprint())
        return self._datasets[entry.label]

    def _run_cell(self, cell: Cell | BaselineCell, key: str, device, env) -> tuple[str, str | None, dict, list]:
        from bench_core import distributed as ddp
        from bench_core.trainer import TrainingDiverged

        started = time.time()
        try:
            if isinstance(cell, BaselineCell):
                rows, details = self._evaluate_baseline(cell, device)
            else:
                rows, details = self._train_and_evaluate(cell, key, device)
        except SkipCell as exc:
            return "skipped", str(exc), {}, []
        except TrainingDiverged as exc:  # decided on all ranks at once, so it is safe to record
            return "failed", _short(str(exc)), {"error": str(exc)}, []
        except Exception:
            # Under torchrun an error on one rank would leave the others blocked in a collective:
            # crash this rank instead, so torchrun stops them all; the cell is retried on re-run.
            if ddp.world_size() > 1:
                raise
            return self._failure()
        details["seconds"] = time.time() - started
        rows = [row.with_provenance(suite_hash=self.suite.source_hash, git=env["git"], packages=env["packages"],
                                    device=env["device"]) for row in rows]  # fmt: skip
        return "done", None, details, rows

    def _train_and_evaluate(self, cell: Cell, key: str, device) -> tuple[list[ResultRow], dict]:
        from bench_core import distributed as ddp
        from bench_core.augment import PairedAugment
        from bench_core.checkpoints import TRAIN_STATE, WEIGHTS, checkpoint_key, load_weights, save_weights
        from bench_core.evaluator import tasks_for
        from bench_core.torchutil import seed_everything
        from bench_core.trainer import TrainSettings, run_stage

        dataset, spec, fingerprint = self._dataset(cell.dataset)
        model_reg = self.registry.get("model", cell.model.plugin)
        model_cls = model_reg.cls
        if spec.dims not in model_cls.dims:
            raise SkipCell(
                f"{model_cls.name} handles {sorted(model_cls.dims)}D data; {cell.dataset.label} is {spec.dims}D"
            )
        reason = model_cls.incompatibility(spec)
        if reason:
            raise SkipCell(reason)
        tasks = tasks_for(frozenset(model_cls.capabilities), spec)
        if not tasks:
            raise SkipCell(f"{model_cls.name} has no capability usable on {cell.dataset.label}")
        config = self.model_config(model_cls, cell.model)
        seed_everything(cell.seed, self.suite.deterministic)
        model = model_cls(config, spec).to(device)
        compiled: list[str] = []
        if self.suite.compile and device.type == "cuda":
            from bench_core.torchutil import compile_children

            compiled = compile_children(model)
        budget = cell.model.budget
        key_parts = {
            "model": model_cls.name, "version": model_cls.version, "config": config,
            "data": fingerprint, "dataset": [cell.dataset.plugin, cell.dataset.options], "spec": _spec_dict(spec),
            "seed": cell.seed,
            "budget": budget.model_dump(mode="json", exclude_none=True), "precision": self.suite.precision,
        }  # fmt: skip
        # Only when set, so checkpoints trained before these options existed keep their keys.
        if cell.dataset.augment:
            key_parts["augment"] = cell.dataset.augment
        if self.suite.validation is not None:
            key_parts["validation"] = self.suite.validation.model_dump(mode="json")
        ckpt = checkpoint_key(key_parts)
        ckdir = self.output_dir / "checkpoints" / ckpt
        details: dict[str, Any] = {
            "config": config,
            "checkpoint": ckpt,
            "spec": _spec_dict(spec),
            "stages": [],
        }
        if self.suite.compile:
            details["compile"] = compiled or f"not applied: torch.compile is a CUDA option here, device is {device}"
        rows: list[ResultRow] = []
        if cell.model.load is not None:
            load_weights(model, cell.model.load)
            details["weights"] = f"loaded from {cell.model.load}"
        elif (ckdir / WEIGHTS).exists():
            load_weights(model, ckdir / WEIGHTS)
            details["weights"] = f"checkpoint store {ckpt}"
        else:
            train = dataset.split("train")
            stages = model.stages()
            previous_optimizer = None
            for index, stage in enumerate(stages):
                stage_budget = budget.for_stage(stage.name)
                settings = TrainSettings(
                    device=device, precision=self.suite.precision, seed=cell.seed,
                    steps=stage_budget.steps, epochs=stage_budget.epochs, batch_size=stage_budget.batch_size,
                    accumulate=stage_budget.accumulate, checkpoint_every=stage_budget.checkpoint_every,
                    progress=self.progress, label=cell.id, num_workers=self.suite.workers,
                    augment=PairedAugment(cell.dataset.augment, spec.modalities, spec.value_range[0]) or None,
                    initial_optimizer=previous_optimizer if stage.continue_optimizer else None,
                )  # fmt: skip
                if index == len(stages) - 1 and self.suite.validation is not None:
                    self._add_validation(settings, model, dataset, spec, tasks, device, cell, ckdir)
                report = run_stage(model, stage, train, settings, ckdir / f"{index:02d}-{TRAIN_STATE}")
                previous_optimizer = report.optimizer_state
                details["stages"].append({k: v for k, v in report.__dict__.items() if k != "optimizer_state"})
                if ddp.is_main():
                    self.log(_stage_line(cell, report))
                batch_size = settings.batch_size or stage.batch_size
                rows += stage_rows(stage.name, report, str(device), self.suite.precision, batch_size)
            if ddp.is_main():
                save_weights(model, ckdir, {"cell": cell.id, "config": config, "fingerprint": fingerprint})
                for stale in ckdir.glob(f"*-{TRAIN_STATE}"):
                    stale.unlink()
            details["weights"] = f"trained, saved as checkpoint {ckpt}"
        # Every rank evaluates its shard of the test split; rank 0 gathers, computes and writes.
        rows += self._evaluate_variants(model, dataset, spec, tasks, device, cell, ckdir, details)
        if not ddp.is_main():
            return [], details
        rows = [row.with_provenance(model_version=model_cls.version, model_dist=model_reg.source.distribution)
                for row in rows]  # fmt: skip
        return rows, details

    def _add_validation(self, settings, model, dataset, spec, tasks, device, cell: Cell, ckdir: Path) -> None:
        """Make ``settings`` score the model on the val split and keep the best weights."""
        from bench_core.checkpoints import BEST_WEIGHTS
        from bench_core.evaluator import EvalJob, EvalSettings, validation_score

        val = self.suite.validation
        assert val is not None
        task = next((t for t in tasks if t.name == val.task), None) if val.task else tasks[0]
        if task is None:
            raise BenchError(
                f"validation.task {val.task!r} is not a task of {cell.model.label} on {cell.dataset.label}; "
                f"its tasks: {', '.join(t.name for t in tasks)}"
            )
        metric_cls = self.registry.get("metric", val.metric).cls
        if task.kind == "sample" and metric_cls.kind == "paired":
            raise BenchError(f"validation: {val.metric} compares pairs, and task {task.name} has no targets")
        job = EvalJob(model, spec, [task], {val.metric: (metric_cls, val.options)}, dataset.split("val"))
        eval_settings = EvalSettings(
            device=device, precision=self.suite.precision, batch_size=val.batch_size, max_items=val.max_items,
            seed=cell.seed, model_temperature=val.temperature, workers=self.suite.workers,
        )  # fmt: skip

        settings.validate = functools.partial(validation_score, job, eval_settings)
        settings.validate_every, settings.validate_every_epochs = val.every_steps, val.every_epochs
        settings.validate_key = f"val_{task.name}_{val.metric}"
        settings.validate_higher_is_better = bool(metric_cls.higher_is_better)
        settings.best_path = ckdir / BEST_WEIGHTS

    def _evaluate_variants(self, model, dataset, spec, tasks, device, cell: Cell, ckdir: Path, details) -> list:
        """Evaluate every variant of the suite (weights x temperature); the first is the headline."""
        from bench_core import distributed as ddp
        from bench_core.checkpoints import BEST_WEIGHTS, WEIGHTS, load_weights
        from bench_core.evaluator import EvalJob, evaluate

        ev = self.suite.evaluation
        cell_dir = self.output_dir / "cells" / _slug(cell.id)
        metrics = self._metrics()
        rows: list[ResultRow] = []
        notes: list[str] = []
        main = ddp.is_main()
        for index, variant in enumerate(ev.variants):
            headline = index == 0
            weights = Path(ckdir / BEST_WEIGHTS if variant.checkpoint == "best" else cell.model.load or ckdir / WEIGHTS)
            # Rank 0 reads the weights (written by rank 0) and sends them to the others.
            if not ddp.broadcast_object(weights.exists() if main else None):
                where = f"weights loaded from {cell.model.load}" if cell.model.load else "no best checkpoint saved"
                notes.append(f"variant {variant.label} not evaluated: {where}")
                continue
            if main:
                load_weights(model, weights)
            ddp.broadcast_module(model)
            out_dir = cell_dir if headline else cell_dir / "variants" / variant.label
            job = EvalJob(model, spec, tasks, metrics, dataset.split("test"), dataset.split("train"))
            outcome = evaluate(job, self._eval_settings(device, cell.seed, variant.temperature), out_dir)
            if not main:
                continue
            suffix = "" if headline else f"@{variant.label}"
            rows += [row.replace(task=row.task + suffix).with_provenance(variant=variant.model_dump(mode="json"))
                     for row in outcome.rows]  # fmt: skip
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / "eval.json", json.dumps(outcome.per_file, indent=1))
            notes += [n if headline else f"{variant.label}: {n}" for n in outcome.notes]
            if headline:
                rows += self._model_metrics(model, dataset, ev.batch_size, cell)
                details.update(cell_dir=str(cell_dir.relative_to(self.output_dir)), grids=outcome.grids)
        if not main:
            return []
        if not rows:
            raise BenchError("no evaluation variant could run: " + "; ".join(notes))
        details["notes"] = notes
        details["variants"] = [v.model_dump(mode="json") for v in ev.variants]
        return rows

    def _metrics(self) -> dict[str, tuple[type, dict[str, Any]]]:
        return {m.plugin: (self.registry.get("metric", m.plugin).cls, m.options) for m in self.suite.metrics}

    def _eval_settings(self, device, seed: int, model_temperature: float | None = None):
        from bench_core.evaluator import EvalSettings

        ev = self.suite.evaluation
        return EvalSettings(
            device=device, precision=self.suite.precision, batch_size=ev.batch_size, n_samples=ev.n_samples,
            temperature=ev.temperature, grid_size=ev.grid_size, max_items=ev.max_items,
            save_images=ev.save_images, seed=seed, model_temperature=model_temperature, workers=self.suite.workers,
        )  # fmt: skip

    def _evaluate_baseline(self, cell: BaselineCell, device) -> tuple[list[ResultRow], dict]:
        """Fit a baseline on the training split and score it on the test split like a model."""
        from bench_core import distributed as ddp
        from bench_core.baselines import BASELINES
        from bench_core.evaluator import EvalJob, evaluate, tasks_for

        dataset, spec, _ = self._dataset(cell.dataset)
        baseline = next(cls for cls in BASELINES if cls.name == cell.baseline)()
        tasks = [t for t in tasks_for(baseline.capabilities, spec) if t.name in cell.tasks]
        baseline.fit(dataset.split("train"), spec, self.suite.evaluation.batch_size)
        cell_dir = self.output_dir / "cells" / _slug(cell.id)
        settings = self._eval_settings(device, cell.seed)
        outcome = evaluate(EvalJob(baseline, spec, tasks, self._metrics(), dataset.split("test")), settings, cell_dir)
        if not ddp.is_main():
            return [], {}
        # No timings or diagnostics: a baseline's metric values only.
        rows = [baseline_row(r, baseline.settings()) for r in outcome.rows if r.kind == "metric"]
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(cell_dir / "eval.json", json.dumps(outcome.per_file, indent=1))
        details = {
            "baseline": baseline.settings(), "description": baseline.description, "spec": _spec_dict(spec),
            "cell_dir": str(cell_dir.relative_to(self.output_dir)), "grids": outcome.grids, "notes": outcome.notes,
        }  # fmt: skip
        return rows, details

    def _model_metrics(self, model, dataset, batch_size: int, cell: Cell) -> list[ResultRow]:
        """Rows of the model's own ``evaluation_metrics`` (ELBO, codebook usage...), if it has them."""
        extra = getattr(model, "evaluation_metrics", None)
        if extra is None:
            return []
        import torch
        from torch.utils.data import DataLoader

        with torch.no_grad():
            values = extra(DataLoader(dataset.split("test"), batch_size=batch_size))
        return model_rows(values, self.registry.get("model", cell.model.plugin).cls.name)


def unknown_options(cls: type, options: dict[str, Any], exclude: tuple[str, ...] = ()) -> str | None:
    """Which keys of ``options`` ``cls(...)`` does not take, with the nearest known one; ``None`` if all are known."""
    import difflib
    import inspect

    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None  # takes anything: the plugin checks its own options
    known = [n for n, p in params.items() if n not in exclude and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    bad = [k for k in options if k not in known]
    if not bad:
        return None
    hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else "")
             for k in bad]  # fmt: skip
    return f"unknown option {', '.join(hints)}; {cls.name} takes: {', '.join(known) or 'no options'}"


def _build_problem(cls: type, config: dict[str, Any], spec) -> str | None:
    """Why ``cls(config, spec)`` cannot be built, tried on the meta device; ``None`` when it can."""
    import torch

    if spec.dims not in cls.dims or cls.incompatibility(spec):
        return None  # recorded as skipped when it runs
    try:
        with torch.device("meta"):
            cls(config, spec)
    except BenchError as exc:
        return str(exc)
    except Exception as exc:  # a plugin's own checks may raise anything; the message is what counts
        if "meta" in str(exc).lower():
            return None  # the model reads tensor values while it builds: only the real run can tell
        return f"{type(exc).__name__}: {exc}"
    return None


def _spec_dict(spec) -> dict[str, Any]:
    return {
        "modalities": list(spec.modalities), "channels": list(spec.channels), "dims": spec.dims,
        "shape": list(spec.shape), "value_range": list(spec.value_range), "splits": dict(spec.split_sizes),
        "description": spec.description,
    }  # fmt: skip


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in text)


def _short(message: str, limit: int = 300) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _stage_line(cell: Cell, report) -> str:
    last = report.curve[-1].get("loss") if report.curve else None
    speed = f", {report.images_per_second:.1f} images/s" if report.images_per_second else ""
    resumed = f", resumed at step {report.resumed_from}" if report.resumed_from else ""
    loss = f", final loss {last:.4g}" if last is not None else ""
    return (
        f"  {cell.id} stage {report.stage}: {report.steps} steps in {report.seconds:.1f} s{speed}{loss}"
        f"{resumed}, {report.skipped} skipped"
    )


def _cell_line(cell: Cell, status: str, reason: str | None, rows: list[ResultRow]) -> str:
    mark = {"done": "✓", "failed": "✗", "skipped": "-"}.get(status, "?")
    if status != "done":
        return f"{mark} {cell.id}: {status}: {reason}"
    shown = [f"{r.task}.{r.metric}={r.value:.4g}" for r in rows if r.metric in ("psnr", "ssim")]
    return f"{mark} {cell.id}: done {' '.join(shown)}"
