"""The ``vqvae2`` model plugin: the two-level VQ-VAE-2 of seeds 002 (OASIS) and 004 (HipMRI).

Named configs:

- ``seed002-oasis`` (``models.md`` 3.2): batch-norm + dropout layers, one halving per level
  (64x64 -> bottom 32x32 -> top 16x16), Adam 1e-3, batch 64;
- ``seed004-hipmri`` (``models.md`` 5.1): rosinality layers, stride-4 bottom and stride-2 top
  (256x128 -> 64x32 -> 32x16), Adam 3e-5, batch 10;
- ``tiny``: the rosinality layout at widths 32/8 and 64 codes of 16 dims (77k parameters) for CPU quickstarts.

Source bugs not reproduced: the EMA codebooks move only in training mode (seed 004 updated
them on validation batches), and the model never rescales intensities itself (seed 004
applied ``Normalize(0.5, 0.5)`` to raw MR values): it works in the dataset's value range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bench_core.api import API_VERSION, RECONSTRUCT, BenchError, DataSpec, OptimizerSpec, TrainingStage
from bench_core.hookspecs import hookimpl

from ._common import eval_mode, only_dict, sub_state
from .vq2_layers import (
    VQ2_SEED002,
    VQ2_SEED004,
    VQ2_TINY,
    VQ2Output,
    VQVAE2Net,
    input_problem,
    level_usage,
    to_memory_format,
    vq2_from_source,
)
from .vq2_layers import source_spec as vq2_source_spec


class VQVAE2(nn.Module):
    """Two-level VQ-VAE-2 reconstructing the one modality of a 2D dataset.

    Training loss ``MSE(x_hat, x) + beta * (commit_top + commit_bottom)``; both codebooks
    learn by EMA. ``evaluation_metrics`` reports codebook usage, perplexity and dead codes
    per level (``top.*``, ``bottom.*``).
    """

    name = "vqvae2"
    # 2.0: seed002-oasis follows its source exactly (relu(x) skips, [bottom, top] decoder input);
    # modules and codebooks are created in the sources' order (their initial weights for a seed).
    version = "2.0"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT})
    dims = frozenset({2})
    configs = {"seed002-oasis": VQ2_SEED002, "seed004-hipmri": VQ2_SEED004, "tiny": VQ2_TINY}
    default_config = "seed004-hipmri"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        super().__init__()
        self.config = dict(config)
        self.modality = spec.modalities[0]
        try:
            self.net = VQVAE2Net(spec.channels[0], config)
        except ValueError as exc:
            raise BenchError(str(exc)) from exc

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any] | None = None) -> str | None:
        """Why this model with ``config`` cannot serve ``spec``: 3D data, paired data or an indivisible shape.

        Without a config: whether some named config can (the smallest ``bottom_down`` of them).
        """
        bottom_down = min(c["bottom_down"] for c in cls.configs.values()) if config is None else config["bottom_down"]
        return input_problem(cls.name, spec, bottom_down)

    @classmethod
    def source_spec(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> DataSpec:
        """A data spec the source checkpoint fits: its image channels, a shape its grids divide."""
        return vq2_source_spec(cls.name, _source_state(sources), config)

    @classmethod
    def from_source(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> dict[str, Tensor]:
        """Our state dict from a source training checkpoint (seed 004's ``save_model`` dict, or seed 002's state dict).

        The config's ``layers`` picks the source: ``rosinality`` (seed004-hipmri, tiny) or
        ``bn_dropout`` (seed002-oasis).
        """
        state = _source_state(sources)
        with torch.device("meta"):
            target = cls(config, cls.source_spec(sources, config)).net.state_dict()
        return {f"net.{k}": v for k, v in vq2_from_source(cls.name, config["layers"], target, state).items()}

    def forward(self, x: Tensor) -> VQ2Output:
        """Encode, quantise and decode ``x`` ``(B, C, H, W)``."""
        return self.net(to_memory_format(self.net, x, self.config["channels_last"]))

    def stages(self) -> list[TrainingStage]:
        """One stage, ``"vqvae"``, training every parameter with Adam."""
        return [
            TrainingStage(
                name="vqvae",
                parameters=self.parameters,
                loss=self.loss,
                optimizer=OptimizerSpec("adam", lr=self.config["lr"]),
                default_steps=self.config["steps"],
                batch_size=self.config["batch_size"],
            )
        ]

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Training loss of a collated batch with its reconstruction, commitment and perplexity terms."""
        x = to_memory_format(self.net, batch[self.modality], self.config["channels_last"])
        return self.net.loss(x, self.config["beta"])

    def reconstruct(self, x: Tensor, modality: str) -> Tensor:
        """Encode and decode ``x`` of ``modality`` in eval mode, in the input's value range."""
        if modality != self.modality:
            raise BenchError(f"vqvae2 was built for modality {self.modality!r}, not {modality!r}")
        with eval_mode(self), torch.no_grad():
            return self(x).reconstruction

    def decode_codes(self, codes_t: Tensor, codes_b: Tensor) -> Tensor:
        """Decode top and bottom code-index grids to images (eval mode, no gradients)."""
        with eval_mode(self), torch.no_grad():
            return self.net.decode_codes(codes_t, codes_b)

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Per-level codebook usage fraction, perplexity and dead-code count of the codes chosen on ``loader``."""
        device = next(self.parameters()).device
        return level_usage(self.net, (batch[self.modality].to(device) for batch in loader))


def _source_state(sources: Sequence[Any]) -> dict[str, Tensor]:
    """The VQ-VAE-2 state dict of a source file: seed 004 nests it under ``model_state_dict``."""
    state = only_dict(list(sources), "vqvae2", "one VQ-VAE-2 checkpoint")
    if "model_state_dict" in state:
        return sub_state(state, "model_state_dict", "vqvae2")
    return sub_state({"state": state}, "state", "vqvae2")


@hookimpl
def bench_models() -> list[type]:
    """Register the ``vqvae2`` model plugin."""
    return [VQVAE2]
