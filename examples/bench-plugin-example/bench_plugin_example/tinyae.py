"""The ``tinyae`` model plugin: a small convolutional variational autoencoder for 2D images.

This module is the template to copy for a new model. A model plugin is a
``torch.nn.Module`` with a few class attributes (name, versions, capabilities, dims,
named configs) and three duties:

- build itself from a config and the dataset's :class:`~bench_core.api.DataSpec`;
- declare its training as :class:`~bench_core.api.TrainingStage` objects (the engine
  runs the loop: devices, precision, optimiser, clipping, EMA, checkpoints);
- implement the capability methods it declares (here ``reconstruct`` and ``sample``),
  taking and returning tensors in the dataset's value range.

The network: two stride-2 convolutions, a dense layer to the mean and log-variance of a
``latent_dim`` Gaussian, and the mirrored decoder ending in a sigmoid. Training minimises
the negative ELBO of a Gaussian decoder (see :meth:`TinyAE.loss`); reconstruction decodes
the posterior mean, sampling decodes draws from the standard normal prior.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench_core.api import RECONSTRUCT, SAMPLE, BenchError, DataSpec, OptimizerSpec, TrainingStage
from bench_core.hookspecs import hookimpl

DOWNSAMPLING = 4
"""Total stride of the encoder (two stride-2 convolutions): height and width must be multiples."""

# The log-variance is clamped before exp(): early in training the encoder can emit large
# values, and exp(logvar) overflowing to Inf would make the loss NaN and the update skipped.
_LOGVAR_LIMIT = 10.0

_BASE = {
    "width": 32,  # channels after the first convolution (doubled after the second)
    "latent_dim": 64,  # size of the Gaussian latent vector
    # Weight of the KL term next to the per-pixel MSE. With both terms per pixel, this loss is
    # the negative ELBO of a Gaussian decoder with variance kl_weight / 2 on the [0, 1] scale,
    # divided by kl_weight: 0.01 means a decoder noise std of about 0.07.
    "kl_weight": 0.01,
    "lr": 1e-3,
    "batch_size": 32,
    "steps": 5000,  # training steps when the suite gives no budget
    "grad_clip": 1.0,  # max global gradient norm, applied by the engine
    "ema_decay": None,  # e.g. 0.999 to evaluate with EMA weights (engine-side); off by default
}

_TINY = {
    **_BASE,
    # Seconds on a laptop CPU for 32x32 or 64x32 images: the quickstart / example-suite size.
    "width": 8,
    "latent_dim": 16,
    "lr": 2e-3,
    "batch_size": 16,
    "steps": 300,
}


class TinyAE(nn.Module):
    """A small convolutional VAE that reconstructs and samples single-modality 2D images.

    Built as ``TinyAE(config, spec)`` by the engine. Inputs and outputs are in the value
    range of the modality (``spec.range_of``); internally images are mapped to ``[0, 1]`` so the sigmoid output
    covers the whole range whatever the dataset declares.
    """

    name = "tinyae"
    # Bump `version` whenever a change alters the weights a config trains to: the engine puts
    # it into checkpoint keys, so old checkpoints are not reused for the new code.
    version = "1.0"
    # The plugin API major this class was written against. Written out, not `API_VERSION`:
    # importing the engine's constant would claim compatibility with any future API.
    api_version = 1
    capabilities = frozenset({RECONSTRUCT, SAMPLE})
    dims = frozenset({2})
    configs = {"base": _BASE, "tiny": _TINY}
    default_config = "base"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        # No compatibility check here: the engine asks incompatibility() before building a model.
        super().__init__()
        self.config = dict(config)
        self.modality = spec.modalities[0]
        self.low, self.high = spec.range_of(self.modality)
        channels, width, latent = spec.channels[0], int(config["width"]), int(config["latent_dim"])
        self.latent_dim = latent
        self.code_shape = (2 * width, spec.shape[0] // DOWNSAMPLING, spec.shape[1] // DOWNSAMPLING)
        features = math.prod(self.code_shape)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(features, 2 * latent),  # mean and log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, features),
            nn.Unflatten(1, self.code_shape),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),  # [0, 1]; mapped back to the dataset's range by _from_unit
        )

    @classmethod
    def incompatibility(cls, spec: DataSpec) -> str | None:
        """Why this model cannot serve ``spec``: 3D or paired data, or a shape not divisible by 4.

        The engine calls this before building the model and records a non-``None`` answer
        as the reason the cell was skipped, so write it for the person reading the report.
        No config needed here (its answer is the same for every config): the one-argument
        form; a model whose needs depend on its config takes ``(spec, config)`` (see tinypix).
        """
        if spec.dims not in cls.dims:
            return f"tinyae is 2D; the dataset is {spec.dims}D"
        if spec.paired:
            return f"tinyae reconstructs single-modality data; the dataset is paired ({', '.join(spec.modalities)})"
        if any(size % DOWNSAMPLING for size in spec.shape):
            return f"tinyae needs height and width divisible by {DOWNSAMPLING}, got {tuple(spec.shape)}"
        return None

    # -- value range ----------------------------------------------------------------------
    def _to_unit(self, x: Tensor) -> Tensor:
        """Map a batch from the dataset's value range to ``[0, 1]``."""
        return (x - self.low) / (self.high - self.low)

    def _from_unit(self, u: Tensor) -> Tensor:
        """Map a batch from ``[0, 1]`` back to the dataset's value range."""
        return self.low + (self.high - self.low) * u

    # -- the network ----------------------------------------------------------------------
    def encode(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``(B, latent_dim)`` of a ``[0, 1]`` batch ``(B, C, H, W)``."""
        mean, logvar = self.encoder(u).chunk(2, dim=1)
        return mean, logvar.clamp(-_LOGVAR_LIMIT, _LOGVAR_LIMIT)

    def decode(self, z: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, C, H, W)`` from latent vectors ``(B, latent_dim)``."""
        return self.decoder(z)

    # -- training -------------------------------------------------------------------------
    def stages(self) -> list[TrainingStage]:
        """One stage, ``"vae"``, training every parameter with Adam.

        The stage carries the maths (which parameters, which loss) and the knobs the
        engine applies around it (optimiser, gradient clipping, EMA, default budget).
        """
        return [
            TrainingStage(
                name="vae",
                parameters=self.parameters,
                loss=self.loss,
                optimizer=OptimizerSpec("adam", lr=self.config["lr"]),
                grad_clip=self.config["grad_clip"],
                ema_decay=self.config["ema_decay"],
                default_steps=self.config["steps"],
                batch_size=self.config["batch_size"],
            )
        ]

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Negative ELBO per pixel of a collated batch (already on the device).

        ``loss = MSE(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I)) / pixels``, both on the
        ``[0, 1]`` scale. Returns ``loss`` (optimised) and detached ``mse`` and ``kl``
        (nats per image), which the engine logs as curves.
        """
        u = self._to_unit(batch[self.modality])
        mean, logvar = self.encode(u)
        # Reparameterisation: the noise comes from torch's global generator, which the
        # engine seeds per cell and saves in its resumable state.
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        mse = F.mse_loss(self.decode(z), u)
        kl = _kl_to_standard_normal(mean, logvar).mean()
        loss = mse + self.config["kl_weight"] * kl / u[0].numel()
        return {"loss": loss, "mse": mse.detach(), "kl": kl.detach()}

    # -- capabilities ---------------------------------------------------------------------
    def reconstruct(self, x: Tensor, modality: str) -> Tensor:
        """Encode and decode a batch of ``modality``; deterministic (decodes the posterior mean)."""
        if modality != self.modality:
            raise BenchError(f"tinyae was built for modality {self.modality!r}, not {modality!r}")
        mean, _ = self.encode(self._to_unit(x))
        return self._from_unit(self.decode(mean))

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` draws from the prior ``N(0, temperature**2 I)``, in the dataset's value range.

        The noise is drawn on ``generator``'s device (the engine passes a seeded CPU
        generator, so samples do not depend on the GPU) and then moved to the model's.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn((n, self.latent_dim), generator=generator, device=device) * temperature
        return self._from_unit(self.decode(z.to(self.decoder[0].weight.device)))

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Mean KL of the test images' posteriors (nats per image), stored next to the metric values.

        A KL near zero means the decoder ignores the latent (posterior collapse): then
        samples and reconstructions are all alike, whatever PSNR says.
        """
        device = self.decoder[0].weight.device
        total, count = 0.0, 0
        for batch in loader:
            mean, logvar = self.encode(self._to_unit(batch[self.modality].to(device)))
            total += float(_kl_to_standard_normal(mean, logvar).sum())
            count += mean.shape[0]
        return {"kl_nats": total / max(count, 1)}


def _kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL divergence of ``N(mean, exp(logvar))`` from ``N(0, I)`` per item, in nats (shape ``(B,)``)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)


@hookimpl
def bench_models() -> list[type]:
    """Register :class:`TinyAE` (the hook may return several classes)."""
    return [TinyAE]
