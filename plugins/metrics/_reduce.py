"""Helpers of the built-in metric plugins beyond :mod:`bench_core.metricbase`: a bounded reservoir sample."""

from __future__ import annotations

import numpy as np

from bench_core.api import BenchError


class Reservoir:
    """A uniform random sample of at most ``capacity`` rows from a stream (Vitter's algorithm R).

    Distribution metrics that must keep per-item data (KID's features, SWD's patches) use it to
    bound memory. Random draws happen only for rows beyond ``capacity``, one per row in stream
    order, so the kept sample depends on the seed and the row order but not on how the stream
    is split into batches; below capacity every row is kept in order.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if not (isinstance(capacity, int) and capacity >= 1):
            raise BenchError(f"reservoir capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget every row seen and restart the random stream."""
        self.seen = 0
        self._rows: list[np.ndarray] = []
        self._rng = np.random.default_rng(self.seed)

    def add(self, rows: np.ndarray) -> None:
        """Offer the rows of a ``(n, ...)`` numpy array, in order."""
        for row in rows:
            if self.seen < self.capacity:
                self._rows.append(row.copy())
            else:
                j = int(self._rng.integers(0, self.seen + 1))
                if j < self.capacity:
                    self._rows[j] = row.copy()
            self.seen += 1

    def rows(self) -> np.ndarray:
        """The kept rows stacked into one ``(min(seen, capacity), ...)`` array (``seen`` must be > 0)."""
        return np.stack(self._rows)
