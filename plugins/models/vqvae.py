"""The ``vqvae`` model plugin: the single-level VQ-VAE of seed 003 (HipMRI reconstruction).

Seed 003 is known from its README only (``models.md`` section 4): a strided-conv encoder
with batch norm, ReLU and residual stacks, a vector quantiser, and a transposed-conv
decoder mirroring the encoder, trained with reconstruction + codebook + beta-weighted
commitment losses. The layers follow the rosinality-style layout of seed 004
(``models.md`` section 5.1) without its bug of updating the EMA codebook on validation
batches: statistics move only in training mode, and the evaluation paths of this model
always run in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench_core.api import (
    API_VERSION,
    RECONSTRUCT,
    BenchError,
    DataSpec,
    OptimizerSpec,
    TrainingStage,
)
from bench_core.hookspecs import hookimpl

from ._common import eval_mode
from .vq_layers import CodeUsage, Decoder, QuantizerOutput, StridedEncoder, VectorQuantizer, VectorQuantizerEMA

_QUANTIZERS = {"ema": VectorQuantizerEMA, "codebook_loss": VectorQuantizer}

_SEED003 = {
    # Seed 003 publishes no code: these are the usual VQ-VAE values the report suggests
    # for a 1x256x128 HipMRI slice; the source's exact values are unverified (README only).
    "hidden": 128,
    "res_hidden": 32,
    "n_res_layers": 2,
    "embedding_dim": 64,
    "n_embeddings": 512,
    "beta": 0.25,
    "n_down": 2,
    # The README's loss has a codebook term ||sg[z_e] - e||^2, i.e. a gradient-trained codebook.
    "quantizer": "codebook_loss",
    "ema_decay": 0.99,
    "eps": 1e-5,
    "dead_code_restart": False,
    "dead_code_threshold": 1.0,
    # The README mentions batch norm in the encoder and decoder.
    "batch_norm": True,
    "lr": 2e-4,
    "batch_size": 16,
    # Not stated in the README: about 28 epochs of its half-sized training split (5 730 slices).
    "steps": 10_000,
    "description": (
        "reconstructed from document 003's README, not from its code (never published): layer sizes, loss "
        "weights and training settings are usual VQ-VAE values, not the source's"
    ),
}

_TINY = {
    **_SEED003,
    # A 2-core CPU quickstart on 64x32 or 64x64 images (a few seconds of training).
    "hidden": 32,
    "res_hidden": 8,
    "n_res_layers": 1,
    "embedding_dim": 16,
    "n_embeddings": 64,
    "quantizer": "ema",
    # Without restarts the randn-initialised EMA codebook collapses to a handful of codes
    # on short CPU runs; with batch norm the MSE after 150 steps was about twice as high.
    "dead_code_restart": True,
    "batch_norm": False,
    "lr": 2e-3,
    "steps": 150,
    "description": "CPU quickstart size of seed003-hipmri's layout (itself reconstructed from document 003's README)",
}


def _shape_problem(shape: tuple[int, ...], n_down: int) -> str | None:
    factor = 2**n_down
    if any(size % factor for size in shape):
        return f"spatial shape {tuple(shape)} must be divisible by {factor} ({n_down} downsamplings)"
    return None


class VQVAE(nn.Module):
    """Single-level VQ-VAE reconstructing the one modality of a 2D dataset.

    Strided encoder (``n_down`` stride-2 convolutions) -> 1x1 convolution to ``embedding_dim`` ->
    vector quantiser (``quantizer``: ``"ema"`` or ``"codebook_loss"``) -> decoder back to
    the input resolution, with no output activation so outputs live in the data's range.
    Training loss: ``MSE(x_hat, x) + beta * commitment`` (+ the codebook loss for the
    ``codebook_loss`` quantiser).
    """

    name = "vqvae"
    # 1.1: the EMA codebook is drawn as a (dim, n) randn, as the VQ-VAE-2 sources draw theirs.
    version = "1.1"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT})
    dims = frozenset({2})
    configs = {"seed003-hipmri": _SEED003, "tiny": _TINY}
    default_config = "seed003-hipmri"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        super().__init__()
        if config["quantizer"] not in _QUANTIZERS:
            raise BenchError(f"unknown quantizer {config['quantizer']!r}; valid: {', '.join(_QUANTIZERS)}")
        self.config = dict(config)
        self.modality = spec.modalities[0]
        channels = spec.channels[0]
        hidden, n_down, bn = config["hidden"], config["n_down"], config["batch_norm"]
        res = (config["res_hidden"], config["n_res_layers"])
        try:
            self.encoder = StridedEncoder(channels, hidden, *res, n_down, bn)
            self.decoder = Decoder(config["embedding_dim"], channels, hidden, *res, n_down, bn)
        except ValueError as exc:
            raise BenchError(str(exc)) from exc
        self.pre_quantize = nn.Conv2d(hidden, config["embedding_dim"], 1)
        self.quantizer = _QUANTIZERS[config["quantizer"]](
            config["embedding_dim"],
            config["n_embeddings"],
            decay=config["ema_decay"],
            eps=config["eps"],
            dead_code_restart=config["dead_code_restart"],
            dead_code_threshold=config["dead_code_threshold"],
        )

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any] | None = None) -> str | None:
        """Why this model with ``config`` (default: the default config) cannot serve ``spec``.

        3D data, paired data, or a shape that ``config``'s ``n_down`` halvings do not divide.
        """
        if spec.dims not in cls.dims:
            return f"vqvae is 2D; dataset is {spec.dims}D"
        if len(spec.modalities) != 1:
            pair = ", ".join(spec.modalities)
            return f"vqvae reconstructs single-modality data; dataset is paired ({pair})"
        return _shape_problem(spec.shape, (config or cls.configs[cls.default_config])["n_down"])

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Encode, quantise and decode ``x`` ``(B, C, H, W)``: the reconstruction and the quantiser output."""
        q = self.quantizer(self.pre_quantize(self.encoder(x)))
        return self.decoder(q.quantized), q

    def decode_codes(self, indices: Tensor) -> Tensor:
        """Decode a grid of code indices ``(B, H / 2**n_down, W / 2**n_down)`` to images."""
        return self.decoder(self.quantizer.lookup(indices))

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
        """Training loss of a collated batch: total, reconstruction MSE, commitment, perplexity."""
        x = batch[self.modality]
        x_hat, q = self(x)
        recon = F.mse_loss(x_hat, x)
        total = recon + self.config["beta"] * q.commitment + q.codebook_loss
        out = {"loss": total, "recon": recon.detach(), "commit": q.commitment.detach()}
        if self.config["quantizer"] == "codebook_loss":
            out["codebook"] = q.codebook_loss.detach()
        out["perplexity"] = q.perplexity.detach()
        return out

    def reconstruct(self, x: Tensor, modality: str) -> Tensor:
        """Encode and decode ``x`` of ``modality`` in eval mode, in the input's value range."""
        if modality != self.modality:
            raise BenchError(f"vqvae was built for modality {self.modality!r}, not {modality!r}")
        with eval_mode(self), torch.no_grad():
            return self(x)[0]

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Codebook usage fraction, perplexity and dead-code count of the codes chosen on ``loader``."""
        usage = CodeUsage(self.quantizer.n_embeddings)
        device = next(self.parameters()).device
        with eval_mode(self), torch.no_grad():
            for batch in loader:
                usage.update(self(batch[self.modality].to(device))[1].indices)
        return usage.summary()


@hookimpl
def bench_models() -> list[type]:
    """Register the ``vqvae`` model plugin."""
    return [VQVAE]
