"""Settings as a reader wants them first: one short human line, the full record kept for a fold.

A metric's settings hold every choice that changes its number, some of them paragraphs
(reduction rules, weight paths). The line keeps the short ones (numbers, flags, one-word
choices) in the order given (the store's: sorted by name); the rest stays in the full settings
shown folded beside it.
A metric that could not run says only why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LINE_ITEMS = 8
"""At most this many settings in a line; the full settings are always one click away."""

_SHORT = 20  # longest string value that still reads as a setting rather than a sentence


def settings_line(settings: Mapping[str, Any]) -> str:
    """``settings`` as one line (``data range 1, preset gaussian, win size 11, …``), or the reason it is unavailable."""
    if settings.get("status") == "unavailable":
        return f"unavailable: {settings.get('reason') or 'no reason given'}"
    parts = [f"{key.replace('_', ' ')} {text}" for key, value in settings.items() if (text := _short(value))]
    line = ", ".join(parts[:LINE_ITEMS])
    return line + (f", … ({len(parts) - LINE_ITEMS} more)" if len(parts) > LINE_ITEMS else "")


def _short(value: Any) -> str | None:
    """A setting's value as a few characters, or ``None`` when it needs more room than a line gives it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, str) and 0 < len(value) <= _SHORT:
        return value
    return None
