"""The Jinja environment of the report pages (index, cell pages, comparisons): autoescaped, strict."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any


def environment() -> Any:
    """A Jinja environment over ``bench_core/report/templates`` with the report's filters."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    # StrictUndefined: a typo in a template fails the build instead of printing nothing.
    env = Environment(
        loader=PackageLoader("bench_core", "report/templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    env.filters["when"] = _when
    env.globals["zip"] = zip
    return env


def engine_version() -> str:
    """medgen-bench's version, printed in every page's footer."""
    from bench_core import __version__

    return __version__


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "–"
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
