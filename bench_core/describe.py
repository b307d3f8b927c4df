"""``bench plugins --details NAME`` and ``bench plugins --json``: what a plugin offers, read from its class.

Nothing here needs data, weights or a device. A model is described by its named configs
(every key with its value), capabilities, the evaluation tasks it gets on small probe specs
and its dims; a dataset by its options (the constructor's keyword parameters and defaults),
whether it can synthesise embedded data, its ``obtain`` hint and, when the class declares
them, its modalities and value range; a metric by its options (the constructor's, less
``data_range`` and ``dims``), how it reads (description, headline), direction, kind, dims and version.

torch is imported only inside functions (through the plugin classes and the evaluator), so
``bench --help`` stays torch-free.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

from bench_core.api import API_VERSION, PluginError
from bench_core.metric_reading import metric_reading
from bench_core.plugins import KINDS, Registered, Registry, incompatibility_of

FROM_THE_DATA = "from the data"
"""What a dataset's modalities or value range read as when the class does not declare them."""

_DATA_ATTRIBUTES = ("modalities", "value_range", "dims")
"""Optional class attributes a dataset may declare when they do not depend on the data."""

_EXCLUDED_OPTIONS = {"model": (), "dataset": ("root",), "metric": ("data_range", "dims")}


def find(registry: Registry, name: str) -> list[Registered]:
    """Every plugin called ``name`` (one per kind; ``dist:name`` picks a distribution).

    An unknown name raises :class:`PluginError` with the nearest known names (``difflib``), or
    the load error of an entry point of that name that failed to load.
    """
    short = name.rpartition(":")[2]
    found = [registry.get(kind, name) for kind in KINDS if short in registry.names(kind)]
    if found:
        return found
    broken = [s for s in registry.sources if s.error and s.entry_point == short]
    if broken:
        raise PluginError(f"plugin {name!r} failed to load: {broken[0].error} (run `bench plugins` for details)")
    known = sorted({n for kind in KINDS for n in registry.names(kind)})
    near = difflib.get_close_matches(short, known, n=3)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise PluginError(f"unknown plugin {name!r}{hint} (installed: {', '.join(known) or 'none'})")


def describe(entry: Registered) -> dict[str, Any]:
    """A JSON-able description of one registered plugin class (see the module docstring)."""
    cls = entry.cls
    out: dict[str, Any] = {
        "type": entry.kind,
        "name": entry.name,
        "version": entry.version,
        "api_version": getattr(cls, "api_version", API_VERSION),
        "summary": _summary(cls),
        "provider": {
            "distribution": entry.source.distribution,
            "version": entry.source.dist_version,
            "entry_point": f"{entry.source.entry_point} = {entry.source.value}",
        },
    }
    out.update({"model": _model, "dataset": _dataset, "metric": _metric}[entry.kind](cls))
    return _jsonable(out)


def _model(cls: type) -> dict[str, Any]:
    from bench_core.evaluator import model_tasks
    from bench_core.testing import CANDIDATE_SPECS

    tasks = {}
    for spec in CANDIDATE_SPECS:
        label = f"{spec.dims}D {'pair ' + '/'.join(spec.modalities) if spec.paired else 'one modality'}"
        label += f" ({'x'.join(map(str, spec.shape))})"
        if spec.dims not in cls.dims:
            tasks[label] = f"not served: {cls.name} handles {_dims(cls.dims)} data"
        elif reason := incompatibility_of(cls, spec, cls.configs[cls.default_config]):
            tasks[label] = f"not served: {reason}"
        else:
            tasks[label] = [task.name for task in model_tasks(cls, spec)]
    declared = getattr(cls, "tasks", None)
    return {
        "capabilities": sorted(cls.capabilities),
        "declared_tasks": "all of its capabilities" if declared is None else sorted(declared),
        "dims": sorted(cls.dims),
        "tasks": tasks,
        "default_config": cls.default_config,
        "configs": {name: dict(config) for name, config in cls.configs.items()},
    }


def _dataset(cls: type) -> dict[str, Any]:
    make = getattr(cls, "make_embedded", None)
    embedded = {"available": make is not None}
    if make is not None:
        embedded["defaults"] = {n: p["default"] for n, p in options_of(make, ("root",)).items() if "default" in p}
    data = {attr: getattr(cls, attr) if hasattr(cls, attr) else FROM_THE_DATA for attr in _DATA_ATTRIBUTES}
    return {
        "options": options_of(cls, _EXCLUDED_OPTIONS["dataset"]),
        "embedded": embedded,
        "obtain": getattr(cls, "obtain", None),
        "data": data,
    }


def _metric(cls: type) -> dict[str, Any]:
    direction = {True: "higher is better", False: "lower is better"}.get(
        cls.higher_is_better, "no direction declared (higher_is_better is None)"
    )
    reading = metric_reading(cls)
    out = {
        "options": options_of(cls, _EXCLUDED_OPTIONS["metric"]),
        "higher_is_better": cls.higher_is_better,
        "direction": direction,
        "description": reading.description,
        "headline": reading.headline,
        "kind": cls.kind,
        "dims": sorted(cls.dims),
    }
    if getattr(cls, "needs_train", False):
        out["needs_train"] = True
    return out


def options_of(target: Any, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Keyword options of a class's constructor (or a function): ``{name: {"default": ..., "type": ...}}``.

    ``default`` is absent for a required option; ``type`` is the annotation as written. When
    ``__init__`` takes ``**kwargs`` the base classes' constructors are read too (the usual
    ``super().__init__(**kwargs)`` forwarding), until one takes no ``**kwargs``.
    """
    functions = []
    if inspect.isclass(target):
        for klass in target.__mro__:
            init = klass.__dict__.get("__init__")
            if klass is object or init is None:
                continue
            functions.append(init)
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
                break
    else:
        functions.append(target)
    options: dict[str, dict[str, Any]] = {}
    for function in functions:
        params = list(inspect.signature(function).parameters.values())
        for p in params[1:] if inspect.isclass(target) else params:  # a constructor's first is self
            if p.name in exclude or p.name in options or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            option: dict[str, Any] = {}
            if p.default is not p.empty:
                option["default"] = p.default
            if p.annotation is not p.empty:
                option["type"] = (
                    p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
                )
            options[p.name] = option
    return options


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _dims(dims: Any) -> str:
    return " or ".join(f"{d}D" for d in sorted(dims))


def _jsonable(value: Any) -> Any:
    """``value`` with tuples and sets as lists and anything JSON cannot hold as its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def listing(registry: Registry) -> dict[str, Any]:
    """``bench plugins --json``: every entry point with what it provides or its load error, and name conflicts."""
    sources = sorted(registry.sources, key=lambda s: (s.distribution, s.entry_point))
    return {
        "api_version": API_VERSION,
        "entry_points": [
            {
                "distribution": s.distribution,
                "version": s.dist_version,
                "entry_point": s.entry_point,
                "value": s.value,
                "provides": [{"type": kind, "name": name} for kind, name in s.provides],
                "error": s.error,
            }
            for s in sources
        ],
        "conflicts": registry.duplicates(),
    }


def render(registry: Registry, name: str | None, as_json: bool) -> str:
    """What ``bench plugins`` prints with ``--details NAME`` and/or ``--json``.

    JSON details are a list, one description per kind that has a plugin called ``name``.
    """
    if name is None:
        return json.dumps(listing(registry), indent=2)
    descriptions = [describe(entry) for entry in find(registry, name)]
    if as_json:
        return json.dumps(descriptions, indent=2)
    return "\n\n".join(format_description(d) for d in descriptions)


def _joined(value: str | list[str]) -> str:
    return value if isinstance(value, str) else ", ".join(value)


def format_description(desc: Mapping[str, Any]) -> str:
    """The terminal form of :func:`describe`'s output."""
    provider = desc["provider"]
    lines = [f"{desc['type']} {desc['name']} {desc['version']} (plugin API v{desc['api_version']})"]
    if desc["summary"]:
        lines.append(f"  {desc['summary']}")
    dist = f"{provider['distribution']} {provider['version']}".rstrip()
    lines.append(f"  provided by: {dist}, entry point {provider['entry_point']}")
    if desc["type"] == "model":
        lines += [
            f"  capabilities: {', '.join(desc['capabilities'])}",
            f"  tasks: {_joined(desc['declared_tasks'])}",
            f"  dims: {_dims(desc['dims'])}",
            "  evaluation tasks on probe data:",
        ]
        for label, tasks in desc["tasks"].items():
            lines.append(f"    {label}: {_joined(tasks)}")
        lines.append(f"  configs (default: {desc['default_config']}):")
        for config, values in desc["configs"].items():
            lines.append(f"    {config}:")
            lines += [f"      {key}: {_value(value)}" for key, value in values.items()]
        return "\n".join(lines)
    lines += _format_options(desc["options"])
    if desc["type"] == "dataset":
        embedded = desc["embedded"]
        if embedded["available"]:
            defaults = ", ".join(f"{k}={_value(v)}" for k, v in embedded["defaults"].items())
            lines.append(f"  embedded data: yes (root: embedded; bench data make {desc['name']} DIR; {defaults})")
        else:
            lines.append("  embedded data: no (give root: a data folder)")
        lines.append(f"  obtain: {desc['obtain'] or '-'}")
        lines += [f"  {attr.replace('_', ' ')}: {_value(value)}" for attr, value in desc["data"].items()]
    else:
        lines += [
            f"  reads as: {desc['description'] or '-'}",
            f"  direction: {desc['direction']}",
            f"  headline: {'yes (shown first: console summary, report)' if desc['headline'] else 'no'}",
            f"  kind: {desc['kind']}" + (" (needs the training split)" if desc.get("needs_train") else ""),
            f"  dims: {_dims(desc['dims'])}",
        ]
    return "\n".join(lines)


def _format_options(options: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not options:
        return ["  options: none"]
    lines = ["  options:"]
    for name, option in options.items():
        default = f" = {_value(option['default'])}" if "default" in option else " (required)"
        kind = f"  [{option['type']}]" if "type" in option else ""
        lines.append(f"    {name}{default}{kind}")
    return lines


def _value(value: Any) -> str:
    # JSON spelling (null, true, "text", [1, 2]) is also valid YAML, which is what suites are written in.
    return value if value == FROM_THE_DATA else json.dumps(value)
