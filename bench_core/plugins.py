"""Plugin discovery and the registry of model, dataset and metric classes.

Plugins are modules named by entry points in the ``bench`` group; built-in plugins are
registered the same way in this project's pyproject.toml. Each entry point is imported
on its own so one broken plugin is recorded with its error instead of breaking the CLI;
lifecycle (observer) hooks are called one plugin at a time through :meth:`Registry.notify`
so one raising observer is reported and disabled instead of stopping a run or a report.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, TypeVar

import pluggy

from bench_core import hookspecs
from bench_core.api import API_VERSION, TASK_ROLES, DataSpec, PluginError

ENTRY_POINT_GROUP = "bench"
KINDS = ("model", "dataset", "metric")
_HOOK_OF_KIND = {"model": "bench_models", "dataset": "bench_datasets", "metric": "bench_metrics"}
_REQUIRED_ATTRS = {
    "model": ("name", "version", "api_version", "capabilities", "dims", "configs", "default_config"),
    "dataset": ("name", "version", "api_version"),
    "metric": ("name", "version", "api_version", "higher_is_better", "kind", "dims"),
}
_STOP_LOADING = (
    "Fix the plugin, or stop loading it: uninstall its distribution, or set BENCH_DISABLE_PLUGIN_AUTOLOAD=1 "
    "and name the plugins you need with -p"
)
logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PluginSource:
    """One entry point: where it comes from and whether it loaded."""

    entry_point: str
    value: str
    distribution: str
    dist_version: str
    error: str | None = None
    provides: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)

    @property
    def key(self) -> str:
        """``dist:entry_point``: unique even when two distributions use one entry-point name."""
        return f"{self.distribution}:{self.entry_point}"


@dataclass
class Registered:
    """A plugin class together with the entry point that provided it."""

    kind: str
    name: str
    cls: type
    source: PluginSource

    @property
    def version(self) -> str:
        return str(getattr(self.cls, "version", "?"))


class Registry:
    """Loaded plugins: entry-point sources, classes by kind and name, and the hook caller.

    Call lifecycle hooks through :meth:`notify`, not ``pm.hook``: ``observer_errors``
    then lists every observer that failed (once each), for the report to show.
    """

    def __init__(self, pm: pluggy.PluginManager, sources: list[PluginSource]):
        self.pm = pm
        self.sources = sources
        self._by_kind: dict[str, dict[str, list[Registered]]] = {k: {} for k in KINDS}
        self.observer_errors: list[str] = []
        self._disabled: set[tuple[str, str]] = set()  # (plugin name, hook name)
        for kind in KINDS:
            self._collect(kind)

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, _HOOK_OF_KIND[kind])
        for impl in hook.get_hookimpls():
            source = self._source_of(impl.plugin)
            classes, exc = _guarded(impl.function)
            if exc is not None:  # a registration hook that raises is recorded, not fatal
                source.error = _short_error(exc, f"calling {_HOOK_OF_KIND[kind]}()")
                continue
            if not isinstance(classes, (list, tuple, type(None))):
                source.error = f"{_HOOK_OF_KIND[kind]}() returned {type(classes).__name__}, not a list of classes"
                continue
            classes = classes or []
            if os.environ.get("BENCH_TRACE_PLUGINS"):
                # Registry hooks are called per implementation (to know who provided what), so
                # pluggy's own tracer does not see them: trace them here in the same style.
                got = ", ".join(getattr(c, "name", repr(c)) for c in classes)
                print(f"  {_HOOK_OF_KIND[kind]} [hook] {self.pm.get_name(impl.plugin)} -> {got}")
            for cls in classes:
                problem = _contract_problem(kind, cls)
                if problem:
                    source.error = problem
                    continue
                source.provides.append((kind, cls.name))
                self._by_kind[kind].setdefault(cls.name, []).append(Registered(kind, cls.name, cls, source))

    def _source_of(self, plugin: Any) -> PluginSource:
        name = self.pm.get_name(plugin)
        for source in self.sources:
            if source.key == name:
                return source
        # Registered directly (tests, `-p module`): describe it by its module.
        source = PluginSource(name or repr(plugin), getattr(plugin, "__name__", repr(plugin)), "(direct)", "")
        self.sources.append(source)
        return source

    def notify(self, hook_name: str, validate: Callable[[Any], str | None] | None = None, **kwargs: Any) -> list[Any]:
        """Call the lifecycle hook ``hook_name`` with ``kwargs`` on each plugin separately.

        A plugin whose implementation raises (``SystemExit`` included; Ctrl-C still stops
        the process), or whose result ``validate`` rejects with a message, is reported
        once (a warning and an entry in :attr:`observer_errors`) and not called for this
        hook again; the other plugins are called as usual.

        Returns:
            The non-``None`` results of the plugins that succeeded, in pluggy's call order.
        """
        hook = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        plugins = list(dict.fromkeys(impl.plugin for impl in reversed(impls)))  # pluggy calls the last first
        results: list[Any] = []
        for plugin in plugins:
            key = (self.pm.get_name(plugin), hook_name)
            if key in self._disabled:
                continue
            # A caller for this plugin alone keeps pluggy's argument checks, wrappers and tracing.
            alone = self.pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not plugin])
            got, exc = _guarded(alone, **kwargs)
            if exc is not None:
                problems = [_short_error(exc, f"calling {hook_name}()")]
            else:
                problems = [p for p in map(validate, got) if p] if validate else []
            if not problems:
                results.extend(got)
                continue
            self._disabled.add(key)
            source = self._source_of(plugin)
            message = (
                f"plugin {source.key} ({source.value}): {problems[0]}; it is not called for {hook_name} again "
                f"in this process. {_STOP_LOADING}"
            )
            self.observer_errors.append(message)
            logger.warning("warning: %s", message)
        return results

    def names(self, kind: str) -> list[str]:
        """Sorted names of the loaded plugins of ``kind``."""
        return sorted(self._by_kind[kind])

    def entries(self, kind: str) -> list[Registered]:
        """Every registered class of ``kind``, duplicates included."""
        return [r for regs in self._by_kind[kind].values() for r in regs]

    def get(self, kind: str, name: str) -> Registered:
        """The plugin class ``name`` of ``kind``, or a :class:`PluginError` the user can act on.

        ``dist:name`` picks one provider when two distributions provide the same name.
        """
        dist, _, short = name.rpartition(":")
        candidates = self._by_kind[kind].get(short, [])
        if dist:
            candidates = [r for r in candidates if r.source.distribution == dist]
        if not candidates:
            broken = [s for s in self.sources if s.error]
            named = [s for s in broken if s.entry_point == short]
            if named:
                raise PluginError(
                    f"{kind} plugin {name!r} failed to load: {named[0].error} (run `bench plugins` for details)"
                )
            installed = ", ".join(self.names(kind)) or "none"
            others = ""
            if broken:  # the wanted class may live in a plugin module that failed or was refused
                others = "; plugins that failed to load: " + "; ".join(f"{s.key} ({s.error})" for s in broken)
            raise PluginError(f"unknown {kind} plugin {name!r}; installed {kind}s: {installed}{others}")
        if len(candidates) > 1:
            providers = " and ".join(
                f"{r.source.distribution} (entry point {r.source.entry_point!r} -> {r.source.value})"
                for r in sorted(candidates, key=lambda r: r.source.distribution)
            )
            raise PluginError(
                f"{kind} name {name!r} is provided by {providers}; qualify it as DIST:{short} or uninstall one"
            )
        return candidates[0]

    def duplicates(self) -> list[str]:
        """One message per name claimed by more than one provider."""
        out = []
        for kind in KINDS:
            for name, regs in sorted(self._by_kind[kind].items()):
                if len(regs) > 1:
                    who = ", ".join(sorted(f"{r.source.distribution}:{r.source.entry_point}" for r in regs))
                    out.append(f"{kind} {name!r} is provided by {who}")
        return out


def _contract_problem(kind: str, cls: Any) -> str | None:
    missing = [a for a in _REQUIRED_ATTRS[kind] if not hasattr(cls, a)]
    if missing:
        return f"{kind} class {getattr(cls, '__name__', cls)!r} lacks {', '.join(missing)}"
    if int(cls.api_version) != API_VERSION:
        return f"{kind} {cls.name!r} targets plugin API v{cls.api_version}; this medgen-bench provides v{API_VERSION}"
    return tasks_problem(cls) if kind == "model" else None


def tasks_problem(cls: Any) -> str | None:
    """Why a model's optional ``tasks`` attribute is invalid (unknown roles, roles without their capability)."""
    declared = getattr(cls, "tasks", None)
    if declared is None:
        return None
    if isinstance(declared, str) or not all(isinstance(t, str) for t in declared):
        return f"model {cls.name!r}: tasks must be a set of task roles, got {declared!r}"
    unknown = sorted(set(declared) - set(TASK_ROLES))
    if unknown:
        return f"model {cls.name!r}: unknown task {', '.join(unknown)}; roles: {', '.join(sorted(TASK_ROLES))}"
    missing = sorted(t for t in declared if TASK_ROLES[t] not in cls.capabilities)
    if missing:
        needs = ", ".join(f"{t} needs {TASK_ROLES[t]!r}" for t in missing)
        return f"model {cls.name!r}: tasks without their capability ({needs}); capabilities: {sorted(cls.capabilities)}"
    return None


def incompatibility_of(cls: type, spec: DataSpec, config: Mapping[str, Any]) -> str | None:
    """Why model class ``cls`` with the resolved ``config`` cannot serve ``spec`` (``None``: it can).

    Calls ``cls.incompatibility(spec, config)``, or ``cls.incompatibility(spec)`` for a model
    written against API 1.0 whose method takes no config.
    """
    if _takes_config(cls.incompatibility):
        return cls.incompatibility(spec, config)
    return cls.incompatibility(spec)


def _takes_config(method: Callable[..., Any]) -> bool:
    params = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 2


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(only: list[str] | None = None, extra_modules: list[ModuleType] | None = None) -> Registry:
    """Discover and load plugins.

    Args:
        only: entry-point names or module paths given with ``-p``. With
            ``BENCH_DISABLE_PLUGIN_AUTOLOAD=1`` only these are loaded; otherwise they are
            loaded in addition to every entry point (like pytest's ``-p``).
        extra_modules: modules to register directly (used by tests).
    """
    pm = _new_manager()
    if os.environ.get("BENCH_TRACE_PLUGINS"):
        pm.trace.root.setwriter(print)
        pm.enable_tracing()
    autoload = os.environ.get("BENCH_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    wanted = list(only or [])
    sources: list[PluginSource] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not autoload and ep.name not in wanted:
            continue
        if ep.name in wanted:
            wanted.remove(ep.name)
        dist = ep.dist.name if ep.dist else "(unknown)"
        source = PluginSource(ep.name, ep.value, dist, ep.dist.version if ep.dist else "")
        sources.append(source)
        if pm.get_plugin(source.key) is not None:  # the same distribution seen twice on sys.path
            source.error = f"{source.key} is installed twice; the first copy found is used"
            continue
        _register(pm, source, ep.load)
    for module_path in wanted:  # `-p some.module` for a plugin without an entry point
        source = PluginSource(module_path, module_path, "(-p)", "")
        sources.append(source)
        _register(pm, source, functools.partial(importlib.import_module, module_path))
    for module in extra_modules or []:
        pm.register(module, name=module.__name__)
    return Registry(pm, sources)


def _register(pm: pluggy.PluginManager, source: PluginSource, load: Callable[[], Any]) -> None:
    """Import a plugin module with ``load`` and register it; a failure is recorded on ``source``."""
    _, exc = _guarded(lambda: pm.register(load(), name=source.key))
    if exc is not None:
        source.error = _short_error(exc, "importing")


def _guarded(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, BaseException | None]:
    """Run plugin code: ``(result, None)``, or ``(None, exception)`` for anything it raises but Ctrl-C.

    ``SystemExit`` (a plugin calling ``sys.exit()``) and other ``BaseException`` subclasses are
    caught too: a plugin must not end the process, and ``except Exception`` lets them through.
    """
    try:
        return call(*args, **kwargs), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return None, exc


def _short_error(exc: BaseException, during: str) -> str:
    """One line: what was raised, while doing what, and where (the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return f"{what} while {during}{where}"
