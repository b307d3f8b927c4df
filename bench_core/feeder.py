"""The metric feeder: metric plugins of one task fed together, computed into results.

(Step one of the feeder: the computed result of one metric.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Computed:
    """One metric's result: its name (as the suite writes it), class, value and per-item values (or ``None``)."""

    name: str
    cls: type
    value: Any  # bench_core.api.MetricValue
    per_item: dict[str, float] | None = None
