"""Reusable building blocks of vector-quantised autoencoders (VQ-VAE, VQ-VAE-2).

The layer layout follows the common rosinality-style design described in the seed
research report (``models.md`` sections 3-5): residual stacks of
``x + conv1x1(relu(conv3x3(relu(x))))``, encoders built from 4x4 stride-2 convolutions
and decoders that mirror them with transposed convolutions and no output activation.

Two quantisers share one nearest-code search:

- :class:`VectorQuantizerEMA` learns its codebook by exponential moving averages of the
  assigned encoder outputs (no gradient reaches the codebook);
- :class:`VectorQuantizer` learns it by gradient through the codebook loss
  ``||sg[z] - e||^2`` of van den Oord et al.

Both update their statistics only in training mode, so evaluating a model never moves
its codebook (one of the source bugs was validation batches updating the EMA codebook).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    """True when running under an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` with a narrower hidden width."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the residual block."""
        return x + self.body(x)


class ResidualStack(nn.Sequential):
    """``n_layers`` :class:`ResBlock` followed by a ReLU."""

    def __init__(self, channels: int, hidden: int, n_layers: int) -> None:
        super().__init__(*[ResBlock(channels, hidden) for _ in range(n_layers)], nn.ReLU())


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class StridedEncoder(nn.Sequential):
    """Strided convolutions first: downsample by ``2**n_down`` to ``hidden`` channels.

    ``n_down`` 4x4 stride-2 convolutions (each followed by optional batch norm and ReLU)
    widen the channels up to ``hidden`` (``hidden / 2**(n_down-1)``, ..., ``hidden``), then
    a 3x3 convolution and a :class:`ResidualStack` refine the features. With ``narrow_first``
    the first strided convolution stops at ``hidden / 2`` even for a single halving and the
    3x3 convolution widens to ``hidden`` (rosinality's stride-2 encoder); for two or more
    halvings the widths are the same either way.

    The other encoder of this package, ``vq2_layers.StemFirstBNEncoder`` (seed 002), starts
    with a 3x3 stem convolution before its strided ones and normalises every convolution.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        res_hidden: int,
        n_res_layers: int,
        n_down: int,
        batch_norm: bool = False,
        narrow_first: bool = False,
    ) -> None:
        if n_down < 1 or hidden % max(2 ** (n_down - 1), 2 if narrow_first else 1):
            raise ValueError(f"hidden={hidden} must be divisible by 2**(n_down-1) with n_down={n_down} >= 1")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(n_down):
            out = hidden // 2 ** (n_down - 1 - i)
            if narrow_first and n_down == 1:
                out = hidden // 2
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), _norm(out, batch_norm), nn.ReLU()]
            channels = out
        layers += [nn.Conv2d(channels, hidden, 3, padding=1), _norm(hidden, batch_norm)]
        layers.append(ResidualStack(hidden, res_hidden, n_res_layers))
        super().__init__(*layers)


class Decoder(nn.Sequential):
    """Mirror of :class:`StridedEncoder`: upsample by ``2**n_up`` to ``out_channels``.

    A 3x3 convolution to ``hidden`` channels and a :class:`ResidualStack`, then ``n_up``
    4x4 stride-2 transposed convolutions halving the channels (``hidden``, ``hidden/2``,
    ..., ``out_channels``). The last one has no normalisation and no activation, so the
    output can take any value range (the sources have no output activation either).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        res_hidden: int,
        n_res_layers: int,
        n_up: int,
        batch_norm: bool = False,
    ) -> None:
        if n_up < 1 or hidden % 2 ** (n_up - 1):
            raise ValueError(f"hidden={hidden} must be divisible by 2**(n_up-1) with n_up={n_up} >= 1")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            _norm(hidden, batch_norm),
            ResidualStack(hidden, res_hidden, n_res_layers),
        ]
        channels = hidden
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1),
                _norm(channels // 2, batch_norm),
                nn.ReLU(),
            ]
            channels //= 2
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1))
        super().__init__(*layers)


@dataclass
class QuantizerOutput:
    """What a quantiser returns for a batch of encoder outputs ``z`` of shape ``(B, D, *spatial)``.

    Attributes:
        quantized: straight-through quantised latents, same shape as ``z``: the forward
            value is the nearest code, the gradient flows to ``z`` unchanged.
        indices: code index per position, shape ``(B, *spatial)``.
        commitment: ``mean((sg[e] - z)^2)`` (unweighted; the model applies beta).
        codebook_loss: ``mean((sg[z] - e)^2)`` for gradient-trained codebooks, a zero
            tensor for EMA codebooks.
        perplexity: ``exp(entropy)`` of the batch's code histogram (detached).
    """

    quantized: Tensor
    indices: Tensor
    commitment: Tensor
    codebook_loss: Tensor
    perplexity: Tensor


class _VectorQuantizerBase(nn.Module, abc.ABC):
    """Nearest-code search, usage tracking and dead-code restarts shared by both quantisers.

    Subclasses provide the codebook as ``self.codebook`` (shape ``(n_embeddings, dim)``)
    and implement :meth:`_learn` (statistics update in training mode) and
    :meth:`_codebook_loss`.

    ``cluster_size`` is an EMA (``decay``) of how many vectors each code received per
    batch. With ``dead_code_restart`` a code whose ``cluster_size`` drops below
    ``dead_code_threshold`` is re-seeded, after each training update, from encoder outputs
    of the current batch picked at random.
    """

    codebook: Tensor
    cluster_size: Tensor

    def __init__(
        self,
        dim: int,
        n_embeddings: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_embeddings = n_embeddings
        self.decay = decay
        self.eps = eps
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("cluster_size", torch.zeros(n_embeddings))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared L2) for each row of ``flat`` ``(N, dim)``."""
        codebook = self.codebook.detach()
        # ||z||^2 - 2 z.e + ||e||^2 as one matmul: no (N, K, dim) intermediate.
        dist_sq = torch.addmm(
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1),
            flat,
            codebook.t(),
            alpha=-2.0,
        )
        return dist_sq.argmin(1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` ``(B, *spatial)`` as a channel-first tensor ``(B, dim, *spatial)``."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise channel-first latents ``z`` ``(B, dim, *spatial)``."""
        # Distances and statistics in float32 even under autocast: half precision rounding
        # would change code assignments and swamp the small EMA increments.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = z.detach().movedim(1, -1).reshape(-1, self.dim)
            flat_indices = self.nearest(flat)
            indices = flat_indices.view(z.shape[0], *z.shape[2:])
            # Codes come from the codebook before this batch's update, as in the sources.
            codes = self.lookup(indices)
            counts = torch.bincount(flat_indices, minlength=self.n_embeddings).to(flat.dtype)
            if self.training:
                self._update(flat, flat_indices, counts.clone())
            commitment = F.mse_loss(z, codes.detach())
            codebook_loss = self._codebook_loss(z, codes)
            quantized = z + (codes - z).detach()
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return QuantizerOutput(quantized, indices, commitment, codebook_loss, perplexity)

    @torch.no_grad()
    def _update(self, flat: Tensor, flat_indices: Tensor, counts: Tensor) -> None:
        """Training-mode update of the usage statistics (and the codebook for EMA)."""
        if _distributed():
            # Statistics are summed over ranks so every replica keeps the same codebook.
            dist.all_reduce(counts)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self._learn(flat, flat_indices)
        if self.dead_code_restart:
            self._restart_dead_codes(flat)

    def _restart_dead_codes(self, flat: Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = flat[torch.randint(flat.shape[0], (n_dead,), device=flat.device)]
        if _distributed():
            # Ranks see different batches: take rank 0's picks so the codebooks stay identical.
            dist.broadcast(picks, src=0)
        self._reseed(dead, picks)

    def _reseed(self, dead: Tensor, picks: Tensor) -> None:
        """Set the codes selected by the mask ``dead`` to ``picks`` and reset their statistics."""
        self.codebook[dead] = picks
        # One vector's worth of usage: a re-seeded code that stays unused decays below the
        # threshold again and is re-seeded at the next step.
        self.cluster_size[dead] = self.dead_code_threshold

    @abc.abstractmethod
    def _learn(self, flat: Tensor, flat_indices: Tensor) -> None:
        """Update the codebook from this step's assignments (``cluster_size`` is already updated)."""

    @abc.abstractmethod
    def _codebook_loss(self, z: Tensor, codes: Tensor) -> Tensor:
        """The loss term that trains the codebook by gradient (zero when it learns otherwise)."""


class VectorQuantizerEMA(_VectorQuantizerBase):
    """Vector quantiser whose codebook follows EMAs of the encoder outputs assigned to it.

    Codebook initialised ``randn``; in training mode cluster sizes and sums decay with
    ``decay`` and the codebook is their Laplace-smoothed ratio. The codebook is a buffer:
    optimisers never see it.

    As in rosinality's quantiser, cluster sizes start at zero, so a code unused by the first
    training batch is divided by about ``eps`` and lands far from every encoder output; it
    stays dead for many steps. Small models whose first encoder outputs cluster near zero
    therefore collapse onto a few codes unless ``dead_code_restart`` is on.
    """

    def __init__(
        self,
        dim: int,
        n_embeddings: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__(dim, n_embeddings, decay, eps, dead_code_restart, dead_code_threshold)
        # Drawn as the sources draw theirs, a (dim, n_embeddings) randn, and stored code-major.
        codebook = torch.randn(dim, n_embeddings).t().contiguous()
        self.register_buffer("codebook", codebook)
        self.register_buffer("embed_avg", codebook.clone())

    def _learn(self, flat: Tensor, flat_indices: Tensor) -> None:
        sums = F.one_hot(flat_indices, self.n_embeddings).to(flat.dtype).t() @ flat
        if _distributed():
            dist.all_reduce(sums)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_embeddings * self.eps) * n
        self.codebook.copy_(self.embed_avg / smoothed.unsqueeze(1))

    def _codebook_loss(self, z: Tensor, codes: Tensor) -> Tensor:
        return z.new_zeros(())

    def _reseed(self, dead: Tensor, picks: Tensor) -> None:
        super()._reseed(dead, picks)
        # Keep embed_avg / cluster_size consistent with the new code (before smoothing).
        self.embed_avg[dead] = picks * self.dead_code_threshold


class VectorQuantizer(_VectorQuantizerBase):
    """Vector quantiser with a gradient-trained codebook (van den Oord et al. 2017).

    The codebook is a parameter trained by the codebook loss ``mean((sg[z] - e)^2)``
    returned in :attr:`QuantizerOutput.codebook_loss`, initialised uniform in
    ``(-1/n_embeddings, 1/n_embeddings)``; ``decay`` only smooths the usage statistics
    that drive dead-code restarts.
    """

    def __init__(
        self,
        dim: int,
        n_embeddings: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__(dim, n_embeddings, decay, eps, dead_code_restart, dead_code_threshold)
        # Small uniform init, the usual choice for gradient-trained codebooks: every code starts
        # near the (initially small) encoder outputs instead of a randn cloud far from them.
        bound = 1 / n_embeddings
        self.codebook = nn.Parameter(torch.empty(n_embeddings, dim).uniform_(-bound, bound))

    def _learn(self, flat: Tensor, flat_indices: Tensor) -> None:
        """Nothing to do: the optimiser moves the codebook."""

    def _codebook_loss(self, z: Tensor, codes: Tensor) -> Tensor:
        return F.mse_loss(codes, z.detach())


class CodeUsage:
    """Histogram of code indices over an evaluation split.

    ``update`` accumulates indices; ``summary`` gives the fraction of codes used,
    the perplexity of the aggregate code distribution (between 1 and ``n_embeddings``)
    and the number of dead codes (never used on the split).
    """

    def __init__(self, n_embeddings: int) -> None:
        self.counts = torch.zeros(n_embeddings, dtype=torch.long)

    def update(self, indices: Tensor) -> None:
        """Count the code indices of a batch (any shape)."""
        self.counts += torch.bincount(indices.flatten().cpu(), minlength=self.counts.numel())

    def summary(self) -> dict[str, float]:
        """``codebook_usage``, ``perplexity`` and ``dead_codes`` of everything counted."""
        total = int(self.counts.sum())
        used = int((self.counts > 0).sum())
        if total == 0:
            perplexity = math.nan
        else:
            probs = self.counts[self.counts > 0].double() / total
            perplexity = float(torch.exp(-(probs * probs.log()).sum()))
        return {
            "codebook_usage": used / self.counts.numel(),
            "perplexity": perplexity,
            "dead_codes": float(self.counts.numel() - used),
        }
