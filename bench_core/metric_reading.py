"""How a metric is read: its one-line description and whether it is a headline number.

A metric plugin may declare ``description`` and ``headline`` as class attributes (see
:class:`bench_core.api.MetricPlugin`). This is the one place their defaults are decided:
the description defaults to the first line of the class docstring, ``headline`` to whether
the metric has a ranking direction. Evaluation stores the resolved values in each row's
provenance, so the report reads them from the store; rows written before that fall back to
the same default through :func:`row_reading`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricReading:
    """How one metric is read: a one-line description and whether it is shown first."""

    description: str
    headline: bool


def _default_headline(higher_is_better: bool | None) -> bool:
    # A metric without a direction is shown but never ranked, so it never leads a summary.
    return higher_is_better is not None


def metric_reading(cls: type) -> MetricReading:
    """The reading of metric plugin class ``cls``, its optional attributes resolved with their defaults."""
    description = getattr(cls, "description", None)
    if not isinstance(description, str) or not description.strip():
        doc = inspect.getdoc(cls) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else ""
    headline = getattr(cls, "headline", None)
    if not isinstance(headline, bool):
        headline = _default_headline(getattr(cls, "higher_is_better", None))
    return MetricReading(" ".join(description.split()), headline)


def row_reading(provenance: Mapping[str, Any], higher_is_better: bool | None) -> MetricReading:
    """The reading a stored row carries in its provenance (defaults for rows stored without one)."""
    headline = provenance.get("headline")
    return MetricReading(
        str(provenance.get("description") or ""),
        headline if isinstance(headline, bool) else _default_headline(higher_is_better),
    )

