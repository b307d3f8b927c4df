"""The ``tinypix`` model plugin: a one-way translator from modality A to modality B.

A pix2pix-style generator (without the discriminator, trained on the L1 loss alone) learns
one direction only, so it declares the one task it does, ``tasks = {"A2B"}``: the engine
evaluates A2B and never asks it for B2A (the roles A and B are the dataset's first and
second modality, whatever their names). Its ``incompatibility`` receives the resolved config,
so the shape it needs follows the config's number of downsampling ``levels``.

Each modality may have a value range of its own (CT in Hounsfield units, MR in ``[0, 1]``):
the input is mapped from the source modality's range and the output to the target's
(:meth:`bench_core.api.DataSpec.range_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bench_core.api import TRANSLATE, BenchError, DataSpec, OptimizerSpec, TrainingStage
from bench_core.hookspecs import hookimpl

_BASE = {
    "width": 32,  # channels of every convolution
    "levels": 3,  # stride-2 downsamplings (and as many upsamplings): height and width divisible by 2**levels
    "lr": 1e-3,
    "batch_size": 16,
    "steps": 3000,
}

_TINY = {**_BASE, "width": 8, "levels": 2, "lr": 2e-3, "batch_size": 8, "steps": 300}


class TinyPix(nn.Module):
    """A small convolutional encoder-decoder translating paired 2D images from A to B."""

    name = "tinypix"
    version = "1.0"
    api_version = 1
    capabilities = frozenset({TRANSLATE})
    # Only A -> B: without this the engine would also evaluate B2A and record it as failed.
    tasks = frozenset({"A2B"})
    dims = frozenset({2})
    configs = {"base": _BASE, "tiny": _TINY}
    default_config = "base"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        # No compatibility check here: the engine asks incompatibility(spec, config) first.
        super().__init__()
        self.config = dict(config)
        self.source, self.target = spec.modalities
        self.ranges = {m: spec.range_of(m) for m in spec.modalities}
        width, levels = int(config["width"]), int(config["levels"])
        layers: list[nn.Module] = [nn.Conv2d(spec.channels_of(self.source), width, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            layers += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        for _ in range(levels):
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, spec.channels_of(self.target), 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any]) -> str | None:
        """Why this model, with the resolved ``config``, cannot serve ``spec`` (the engine checks ``dims`` first)."""
        if not spec.paired:
            return f"tinypix translates paired data; the dataset has one modality ({spec.modalities[0]})"
        factor = 2 ** int(config["levels"])
        if any(size % factor for size in spec.shape):
            levels = config["levels"]
            return f"tinypix with levels={levels} needs height and width divisible by {factor}, got {spec.shape}"
        return None

    def _unit(self, x: Tensor, modality: str) -> Tensor:
        low, high = self.ranges[modality]
        return (x - low) / (high - low)

    def _from_unit(self, u: Tensor, modality: str) -> Tensor:
        low, high = self.ranges[modality]
        return low + (high - low) * u

    def translate(self, x: Tensor, source: str, target: str) -> Tensor:
        """``x`` of the source modality as the target modality, in the target's value range."""
        if (source, target) != (self.source, self.target):
            raise BenchError(f"tinypix translates {self.source} to {self.target} only, not {source} to {target}")
        return self._from_unit(self.net(self._unit(x, source)), target)

    def stages(self) -> list[TrainingStage]:
        """One stage: L1 between the translation and the target, on the [0, 1] scale of each range."""
        return [
            TrainingStage(
                name="translator",
                parameters=self.parameters,
                loss=self.loss,
                optimizer=OptimizerSpec("adam", lr=float(self.config["lr"])),
                default_steps=int(self.config["steps"]),
                batch_size=int(self.config["batch_size"]),
            )
        ]

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{"loss": L1}`` of one batch."""
        pred = self.net(self._unit(batch[self.source], self.source))
        return {"loss": F.l1_loss(pred, self._unit(batch[self.target], self.target))}


@hookimpl
def bench_models() -> list[type]:
    """Register :class:`TinyPix`."""
    return [TinyPix]
