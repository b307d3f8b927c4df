"""pluggy hook specifications of the ``bench`` project.

A plugin module (named by an entry point in the ``bench`` group) implements any of these
with :data:`bench_core.hookimpl`. The registry hooks return classes; they must not mutate
global state. Lifecycle hooks observe a run and may add report sections; the engine calls
them one plugin at a time (:meth:`bench_core.plugins.Registry.notify`), so an implementation
that raises is reported once, listed in the report and not called again in that process,
while the run and the other plugins go on.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "bench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bench_models() -> list[type]:
    """Return model plugin classes (see :class:`bench_core.api.ModelPlugin`)."""


@hookspec
def bench_datasets() -> list[type]:
    """Return dataset plugin classes (see :class:`bench_core.api.DatasetPlugin`)."""


@hookspec
def bench_metrics() -> list[type]:
    """Return metric plugin classes (see :class:`bench_core.api.MetricPlugin`)."""


@hookspec
def bench_run_start(suite: Any, output_dir: str) -> None:
    """Called once before the first cell of a suite runs."""


@hookspec
def bench_run_end(suite: Any, output_dir: str, summary: dict[str, int]) -> None:
    """Called once after the last cell; ``summary`` counts cells by status."""


@hookspec
def bench_result_written(row: dict[str, Any]) -> None:
    """Called after each metric row is committed to the results store."""


@hookspec
def bench_report_sections(store_path: str) -> list[dict[str, str]]:
    """Return extra report sections as ``{"title": ..., "html": ...}`` dicts.

    ``store_path`` is the run's output directory, the folder holding ``results.sqlite``.

    The ``html`` is inserted as given (a plugin is trusted code); titles are escaped.
    """
