"""Checks before any work (``bench run`` and ``--dry-run``): every problem of a suite, named at once.

Plugins, configs and params, data folders, dataset and metric options (unknown keys with the
nearest known one), the splits a cell needs (empty or missing), validation's val split, and
each model built from its config on its dataset's spec on the meta device (no memory, no
weights), so an impossible config fails here, not after training.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

import torch

from bench_core.api import BenchError, DataSpec
from bench_core.cells import Cell, Datasets, model_config
from bench_core.plugins import Registry, incompatibility_of
from bench_core.suite import DatasetEntry, Suite, unmet_requirements


def preflight(suite: Suite, registry: Registry, datasets: Datasets, cells: list[Cell]) -> None:
    """Raise one :class:`BenchError` listing every problem that stops ``cells`` of ``suite`` from running."""
    problems = [f"requires: {p}" for p in unmet_requirements(suite.requires)]
    models = _model_problems(registry, cells, problems)
    specs = {}
    for entry in {c.dataset.label: c.dataset for c in cells}.values():
        served = [c for c in cells if c.dataset.label == entry.label]
        problem = _dataset_problem(suite, registry, datasets, entry, served)
        if problem:
            problems.append(f"datasets[{entry.label}]{problem}")
        else:
            specs[entry.label] = datasets.get(entry).spec
    for entry in suite.metrics:
        try:
            cls = registry.get("metric", entry.plugin).cls
        except BenchError as exc:
            problems.append(f"metrics[{entry.plugin}]: {exc}")
            continue
        if problem := unknown_options(cls, entry.options, exclude=("data_range", "dims")):
            problems.append(f"metrics[{entry.plugin}].options: {problem}")
    pairs = {(c.model.label, c.dataset.label) for c in cells}
    for model, dataset in sorted(p for p in pairs if p[0] in models and p[1] in specs):
        if problem := _build_problem(*models[model], specs[dataset]):
            problems.append(f"models[{model}] on {dataset}: {problem}")
    if problems:
        where = suite.source_path or suite.name
        unique = list(dict.fromkeys(problems))
        raise BenchError(f"{where}: cannot run this suite:\n" + "\n".join(f"  {p}" for p in unique))


def _model_problems(registry: Registry, cells: list[Cell], problems: list[str]) -> dict[str, tuple[type, dict]]:
    """The (class, merged config) of each model entry that resolves; the others' problems into ``problems``."""
    models = {}
    for entry in {c.model.label: c.model for c in cells}.values():
        try:
            cls = registry.get("model", entry.plugin).cls
            models[entry.label] = (cls, model_config(cls, entry))
        except BenchError as exc:
            problems.append(f"models[{entry.label}]: {exc}")
        if entry.load is not None and not entry.load.exists():
            problems.append(f"models[{entry.label}].load: checkpoint file not found: {entry.load}")
    return models


def _dataset_problem(
    suite: Suite, registry: Registry, datasets: Datasets, entry: DatasetEntry, cells: list[Cell]
) -> str | None:
    """What stops ``entry`` from serving ``cells`` (``.key: message``), or ``None``."""
    try:
        cls = registry.get("dataset", entry.plugin).cls
    except BenchError as exc:
        return f": {exc}"
    if not entry.is_embedded and not Path(entry.root).is_dir():
        hint = getattr(cls, "obtain", "")
        return f".root: data folder {entry.root!r} does not exist" + (f"; {hint}" if hint else "")
    if problem := unknown_options(cls, entry.options, exclude=("root",)):
        return f".options: {problem}"
    try:
        spec = datasets.get(entry).spec
    except BenchError as exc:
        return f": {exc}"
    needed = {"test": "evaluation"}
    if any(c.model.load is None for c in cells):
        needed["train"] = "training"
    if suite.validation is not None:
        needed["val"] = "validation:"
    empty = [f"{split} (needed by {why})" for split, why in needed.items() if not spec.split_sizes.get(split)]
    if empty and spec.split_sizes:
        return f": empty or missing split {', '.join(empty)} under {entry.root}"
    return None


def unknown_options(cls: type, options: dict[str, Any], exclude: tuple[str, ...] = ()) -> str | None:
    """Which keys of ``options`` ``cls(...)`` does not take, with the nearest known one; ``None`` if all are known."""
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


def _build_problem(cls: type, config: dict[str, Any], spec: DataSpec) -> str | None:
    """Why ``cls(config, spec)`` cannot be built, tried on the meta device; ``None`` when it can."""
    if spec.dims not in cls.dims or incompatibility_of(cls, spec, config):
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
