"""A model at one config on inputs of one shape and batch: the cases of the model benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench_core.api import DataSpec


@dataclass(frozen=True)
class Case:
    """A model class at one named config, on data of one shape (channels per modality, spatial shape).

    ``note`` says how the case differs from the config's source setting; ``overrides`` are
    merged into the named config.
    """

    cls: type
    config: str
    channels: tuple[int, ...]
    shape: tuple[int, ...]
    batch: int
    note: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``<model>-<config>``, the benchmark's parameter id."""
        return f"{self.cls.name}-{self.config}"

    def spec(self) -> DataSpec:
        """The data spec of the case: one modality, or a pair, in [-1, 1], 64 training items."""
        modalities = ("A", "B") if len(self.channels) == 2 else ("image",)
        return DataSpec(modalities, self.channels, len(self.shape), self.shape, (-1.0, 1.0), {"train": 64})
