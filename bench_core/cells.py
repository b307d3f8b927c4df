"""Cells and the plan: what a suite asks to run, each cell's identity, and the data cells share.

A suite expands into model x dataset x seed :class:`Cell` objects (:func:`plan`), plus, per
dataset, the :class:`BaselineCell` objects of the baselines that share a task with one of
its models (:func:`baseline_cells`). A cell's key (:func:`cell_key`) hashes everything that
determines its rows; the results store claims, finishes and supersedes cells by it.
Datasets are built once per run and shared by their cells (:class:`Datasets`).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench_core import baselines
from bench_core.api import BenchError, DataSpec, cache_dir, merge_config
from bench_core.baselines import BASELINES
from bench_core.checkpoints import checkpoint_key
from bench_core.evaluator import model_tasks, tasks_for
from bench_core.fileio import remove_stale_temporaries
from bench_core.plugins import Registry
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
    """The cells of ``suite`` after ``include``/``exclude`` and ``--only`` (glob patterns).

    A pattern that matches none of the suite's cells is an error naming it and the nearest
    cell id (a typo would otherwise drop cells silently).
    """
    cells = [Cell(m, d, s) for m in suite.models for d in suite.datasets for s in suite.seeds]
    ids = [c.id for c in cells]
    for option, patterns in (("include", suite.include), ("exclude", suite.exclude), ("--only", only or [])):
        for pattern in patterns:
            if not fnmatch.filter(ids, pattern):
                raise BenchError(_no_match(option, pattern, ids))

    def keep(cell: Cell) -> bool:
        if suite.include and not any(fnmatch.fnmatch(cell.id, p) for p in suite.include):
            return False
        if any(fnmatch.fnmatch(cell.id, p) for p in suite.exclude):
            return False
        return not only or any(fnmatch.fnmatch(cell.id, p) for p in only)

    return [c for c in cells if keep(c)]


def _no_match(option: str, pattern: str, ids: list[str]) -> str:
    """The error of a pattern that matches no cell id: the pattern, the nearest id, the form of ids."""
    nearest = difflib.get_close_matches(pattern, ids, n=1, cutoff=0.0)
    hint = f"; the nearest cell is {nearest[0]!r}" if nearest else ""
    return (
        f"{option} pattern {pattern!r} matches no cell of the suite{hint} "
        f"(cell ids are model/dataset/seedN, glob patterns: *, ?, [...])"
    )


@dataclass(frozen=True)
class BuiltDataset:
    """A dataset plugin instance with its spec and fingerprint, built once per run."""

    dataset: Any
    spec: DataSpec
    fingerprint: str


class Datasets:
    """The datasets of a run, built on first use through the registry (embedded data written once)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._built: dict[str, BuiltDataset] = {}

    def get(self, entry: DatasetEntry) -> BuiltDataset:
        """The dataset of ``entry``; its errors (a missing folder, a bad file) propagate."""
        if entry.label not in self._built:
            cls = self.registry.get("dataset", entry.plugin).cls
            embedded = entry.embedded
            root = embedded_root(cls, embedded.n, embedded.seed) if entry.is_embedded else Path(entry.root)
            dataset = cls(root, **entry.options)
            self._built[entry.label] = BuiltDataset(dataset, dataset.spec(), dataset.fingerprint())
        return self._built[entry.label]

    def fingerprint(self, entry: DatasetEntry) -> str:
        """The data's fingerprint, or ``unreadable`` (the cell fails with the error when it runs; its key stays)."""
        try:
            return self.get(entry).fingerprint
        except BenchError:
            return "unreadable"


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


def model_config(cls: type, entry: ModelEntry) -> dict[str, Any]:
    """The named config of ``entry`` (or the model's default) merged with its params."""
    name = entry.config or cls.default_config
    if name not in cls.configs:
        raise BenchError(f"model {cls.name!r} has no config {name!r}; configs: {', '.join(sorted(cls.configs))}")
    try:
        return merge_config(cls.configs[name], entry.params)
    except BenchError as exc:
        raise BenchError(f"params of config {name!r}: {exc}") from None


def cell_key(suite: Suite, registry: Registry, datasets: Datasets, cell: Cell | BaselineCell) -> str:
    """A stable key of everything that determines a cell's results (resume identity).

    It holds the suite's entries as written, and what they resolve to: the model's
    merged config and plugin version, the dataset plugin's version and the data's
    fingerprint, and each metric plugin's version. Editing any of them, or replacing the
    data under the same root, makes a new cell; the old one is superseded, not mixed in.
    """
    ds_cls = registry.get("dataset", cell.dataset.plugin).cls
    parts: dict[str, Any] = {
        "suite": suite.name, "dataset": cell.dataset.model_dump(mode="json"),
        "dataset_version": ds_cls.version, "data": datasets.fingerprint(cell.dataset), "seed": cell.seed,
        "precision": suite.precision,
        "metrics": [[m.model_dump(mode="json"), registry.get("metric", m.plugin).cls.version] for m in suite.metrics],
        "evaluation": suite.evaluation.model_dump(mode="json"),
    }  # fmt: skip
    if isinstance(cell, BaselineCell):
        parts.update(baseline=cell.baseline, baseline_version=baselines.VERSION, tasks=list(cell.tasks))
    else:
        model_cls = registry.get("model", cell.model.plugin).cls
        parts.update(model=cell.model.model_dump(mode="json"), model_version=model_cls.version,
                     config=model_config(model_cls, cell.model))  # fmt: skip
    return checkpoint_key(parts)


def baseline_cells(registry: Registry, datasets: Datasets, cells: list[Cell]) -> list[BaselineCell]:
    """The baselines of each dataset of ``cells`` that share a task with one of its models."""
    out = []
    for label, entry in {c.dataset.label: c.dataset for c in cells}.items():
        try:
            spec = datasets.get(entry).spec
        except BenchError:
            continue  # its cells fail with the reason
        served = {
            t.name
            for c in cells if c.dataset.label == label
            for t in model_tasks(registry.get("model", c.model.plugin).cls, spec)
        }  # fmt: skip
        for cls in BASELINES:
            tasks = tuple(t.name for t in tasks_for(cls.capabilities, spec) if t.name in served)
            if tasks and cls().incompatibility(spec) is None:
                out.append(BaselineCell(cls.name, entry, tasks))
    return out
