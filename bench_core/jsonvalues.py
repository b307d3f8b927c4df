"""Non-finite numbers in the JSON files other tools read: strict JSON that keeps NaN, inf and -inf apart.

JSON has no NaN or infinity, and Python's ``json`` writes the tokens ``NaN``/``Infinity``,
which strict parsers refuse; writing ``null`` instead would merge an undefined value with
a missing one. The exports (``bench export --format json``, CSV) and ``leaderboard.json``
therefore write a non-finite number as the string ``"nan"``, ``"inf"`` or ``"-inf"``, and
``null`` only where there is no value at all (documented in docs/outputs.md).
"""

from __future__ import annotations

import json
import math
from typing import Any

NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
"""The strings written for non-finite numbers, and the floats they stand for."""


def encode_nonfinite(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts, lists and tuples) replaced by its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_nonfinite(v) for v in value]
    return value


def decode_nonfinite(value: Any) -> Any:
    """The inverse of :func:`encode_nonfinite`: the strings ``"nan"``, ``"inf"``, ``"-inf"`` back to floats.

    Meant for numeric fields: a text field whose value is one of those strings would be turned too.
    """
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: decode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` as strict JSON, non-finite numbers written as strings."""
    return json.dumps(encode_nonfinite(value), allow_nan=False, **kwargs)
