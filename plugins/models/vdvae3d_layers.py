"""Building blocks of the 3D very deep VAE (``vdvae3d``, seed 001, ``models.md`` section 2.2).

All convolutions are 3D, there is no normalisation layer, every activation is a GELU and
every convolution bias starts at zero. Per-resolution lists are indexed by *level* ``k``:
level 0 is the full resolution ``R``, level ``k`` has edge ``R / 2**k`` and the last level is 1^3.

- :class:`ConvBlock`: bottleneck residual block ``1 -> k -> k -> 1`` (GELU before each conv);
- :class:`BottomUp`: the encoder, two ConvBlocks per level and nearest x1/2 subsampling,
  keeping the second block's output of every level as that level's lateral skip;
- :class:`TopLatentBlock`: the uppermost (1^3) latent layer, posterior from the encoder
  only and a standard-normal prior;
- :class:`LatentBlock`: every other latent layer, prior from the decoder state and posterior
  from the decoder state concatenated with the encoder skip;
- :class:`TopDown`: nearest x2 upsampling per level, then ``[latent block -> ConvBlock]`` once
  per latent layer of that level; optional activation checkpointing per block;
- :class:`GaussianHead`: per-voxel Gaussian likelihood with a tanh mean and a bounded std.

Standard deviations are bounded as the source does: ``lo + (1 - lo) * sigmoid(raw)`` with
``lo = 0.001`` for latents and ``0.01`` for the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._common import gaussian_kl, noise

LATENT_STD_MIN = 0.001
"""Lower bound of every latent standard deviation (the source's ``scale_hidden_clamp_bounds``)."""
OUTPUT_STD_MIN = 0.01
"""Lower bound of the per-voxel output standard deviation (``scale_output_clamp_bounds``)."""
KL_VAR_FLOOR = 1e-5
"""Floor on the prior variance in the KL's denominator."""
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def bounded_std(raw: Tensor, low: float) -> Tensor:
    """``low + (1 - low) * sigmoid(raw)``: a standard deviation in ``(low, 1)``."""
    return low + (1.0 - low) * torch.sigmoid(raw)


def standard_normal(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Noise shaped and typed as ``like``, drawn by the models' one rule (``_common.noise``)."""
    return noise("normal", like, generator)


class PaddedConv3d(nn.Module):
    """A ``k^3`` convolution keeping the spatial size with explicit zero padding.

    Odd ``k`` pads ``k // 2`` on both sides; even ``k`` pads one voxel more before than
    after (``k = 2``: 1 before, 0 after), as the source does; ``k = 1`` needs none.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        before, after = kernel // 2, (kernel - 1) // 2
        self.pad = (before, after) * 3
        self.conv = nn.Conv3d(in_channels, out_channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        """Pad, then convolve."""
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.conv(x)


def _conv1(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 1)


def _zero_bias(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv3d) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _scale_(conv: nn.Conv3d, factor: float) -> None:
    with torch.no_grad():
        conv.weight.mul_(factor)


def _zero_(conv: nn.Conv3d) -> None:
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _Trunk(nn.Sequential):
    """GELU -> 1x1 (in -> hidden) -> GELU -> k^3 -> GELU -> k^3 -> GELU: the features of a latent network."""

    def __init__(self, in_channels: int, hidden: int, kernel: int) -> None:
        super().__init__(
            nn.GELU(),
            _conv1(in_channels, hidden),
            nn.GELU(),
            PaddedConv3d(hidden, hidden, kernel),
            nn.GELU(),
            PaddedConv3d(hidden, hidden, kernel),
            nn.GELU(),
        )


class ConvBlock(nn.Module):
    """Bottleneck block: GELU -> 1x1 (in -> hidden) -> GELU -> k^3 -> GELU -> k^3 -> GELU -> 1x1 (-> out).

    With ``residual`` the input is added back (identity, or a 1x1 projection when the widths
    differ) and the last convolution's initial weights are scaled by ``1 / sqrt(depth)`` so
    the variance of the residual stream grows slowly with depth.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel: int, residual: bool, depth: int):
        super().__init__()
        self.body = nn.Sequential(_Trunk(in_channels, hidden, kernel), _conv1(hidden, out_channels))
        self.residual = residual
        self.skip = _conv1(in_channels, out_channels) if residual and in_channels != out_channels else None
        if residual:
            _scale_(self.body[-1], 1.0 / math.sqrt(depth))
        _zero_bias(self)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = self.body(x)
        if not self.residual:
            return out
        return out + (x if self.skip is None else self.skip(x))


class BottomUp(nn.Module):
    """The encoder: per level, ``ConvBlock(previous -> channels[k])`` then ``ConvBlock(channels[k])``.

    The second block's output is the level's lateral skip; the state is then subsampled by
    nearest-neighbour interpolation to half the edge (not after the 1^3 level).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], kernels: Sequence[int], depth: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        previous = in_channels
        for width, kernel in zip(channels, kernels, strict=True):
            self.levels.append(
                nn.Sequential(
                    ConvBlock(previous, width, width, kernel, residual=True, depth=depth),
                    ConvBlock(width, width, width, kernel, residual=True, depth=depth),
                )
            )
            previous = width
        self.checkpointing = False

    def forward(self, x: Tensor) -> list[Tensor]:
        """The lateral skips of ``x``, full resolution first (level ``k`` has edge ``R / 2**k``)."""
        skips = []
        for k, level in enumerate(self.levels):
            if k > 0:
                x = F.interpolate(x, scale_factor=0.5, mode="nearest")
            for block in level:
                x = _maybe_checkpoint(self.checkpointing and self.training, block, x)
            skips.append(x)
        return skips


@dataclass
class LatentOutput:
    """What a latent block returns: the new decoder state and the per-sample KL (``None`` in prior mode)."""

    h: Tensor
    kl: Tensor | None


class TopLatentBlock(nn.Module):
    """The uppermost latent layer (1^3): posterior from the top encoder feature, prior N(0, I).

    Its output is ``conv_z(z)`` alone (no residual input): the decoder state starts here.
    """

    def __init__(self, enc_channels: int, hidden: int, latent: int, out_channels: int, kernel: int, depth: int):
        super().__init__()
        self.latent = latent
        self.posterior = _Trunk(enc_channels, hidden, kernel)
        self.q_mu = _conv1(hidden, latent)
        self.q_raw = _conv1(hidden, latent)
        self.conv_z = _conv1(latent, out_channels)
        _scale_(self.conv_z, 1.0 / math.sqrt(depth))
        _zero_bias(self)

    def forward(
        self,
        enc: Tensor | None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        n: int = 0,
    ) -> LatentOutput:
        """Posterior mode with ``enc`` (the 1^3 encoder feature); prior mode (``n`` samples) without."""
        if enc is None:
            ref = self.conv_z.weight.new_zeros(n, self.latent, 1, 1, 1)
            z = temperature * standard_normal(ref, generator) if temperature else ref
            return LatentOutput(self.conv_z(z), None)
        features = self.posterior(enc)
        mu_q = self.q_mu(features).float()
        std_q = bounded_std(self.q_raw(features).float(), LATENT_STD_MIN)
        z = mu_q + temperature * std_q * standard_normal(mu_q, generator) if temperature else mu_q
        kl = gaussian_kl(mu_q, std_q).sum(dim=(1, 2, 3, 4))
        return LatentOutput(self.conv_z(z.to(features.dtype)), kl)


class LatentBlock(nn.Module):
    """A latent layer below the top: prior from the decoder state ``h``, posterior from ``[enc, h]``.

    - prior: trunk on ``h``, then zero-initialised 1x1 heads for the mean and raw scale, and a
      zero-initialised 1x1 "prior skip" (hidden -> out) added to the output;
    - posterior: trunk on ``concat(enc, h)``, then 1x1 heads for the mean and raw scale;
    - output: ``conv_z(z) + prior_skip + skip(h)``, ``skip`` the identity or a 1x1 projection
      when ``h`` is wider (the first block after an upsampling).
    """

    def __init__(
        self,
        in_channels: int,
        enc_channels: int,
        hidden: int,
        latent: int,
        out_channels: int,
        kernel: int,
        depth: int,
    ) -> None:
        super().__init__()
        self.prior = _Trunk(in_channels, hidden, kernel)
        self.p_mu = _conv1(hidden, latent)
        self.p_raw = _conv1(hidden, latent)
        self.prior_skip = _conv1(hidden, out_channels)
        self.posterior = _Trunk(enc_channels + in_channels, hidden, kernel)
        self.q_mu = _conv1(hidden, latent)
        self.q_raw = _conv1(hidden, latent)
        self.conv_z = _conv1(latent, out_channels)
        self.skip = _conv1(in_channels, out_channels) if in_channels != out_channels else None
        _scale_(self.conv_z, 1.0 / math.sqrt(depth))
        _zero_bias(self)
        # At initialisation the prior is the same everywhere and adds nothing to the state.
        for conv in (self.p_mu, self.p_raw, self.prior_skip):
            _zero_(conv)

    def forward(
        self,
        h: Tensor,
        enc: Tensor | None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> LatentOutput:
        """Posterior mode with ``enc`` (the encoder skip at this resolution); prior mode without."""
        prior = self.prior(h)
        mu_p = self.p_mu(prior).float()
        std_p = bounded_std(self.p_raw(prior).float(), LATENT_STD_MIN)
        kl = None
        if enc is None:
            mu, std = mu_p, std_p
        else:
            features = self.posterior(torch.cat([enc, h], dim=1))
            mu = self.q_mu(features).float()
            std = bounded_std(self.q_raw(features).float(), LATENT_STD_MIN)
            kl = gaussian_kl(mu, std, mu_p, std_p, KL_VAR_FLOOR).sum(dim=(1, 2, 3, 4))
        z = mu + temperature * std * standard_normal(mu, generator) if temperature else mu
        out = self.conv_z(z.to(prior.dtype)) + self.prior_skip(prior)
        return LatentOutput(out + (h if self.skip is None else self.skip(h)), kl)


class TopDown(nn.Module):
    """The decoder: from 1^3 up to the full resolution, ``[latent block -> ConvBlock]`` per latent layer.

    Level ``k`` (edge ``R / 2**k``) holds ``latents[k]`` pairs; moving to a finer level first
    upsamples the state x2 (nearest). The ConvBlocks of the full-resolution level are not
    residual, as in the source. ``resolutions`` lists the edge of every latent layer in
    decoding order (coarsest first), so KLs can be grouped per resolution.
    """

    def __init__(
        self,
        size: int,
        channels: Sequence[int],
        latents: Sequence[int],
        latent_channels: Sequence[int],
        kernels: Sequence[int],
        depth: int,
    ) -> None:
        super().__init__()
        top = len(channels) - 1
        self.levels = nn.ModuleList()
        self.level_index: list[int] = []
        self.resolutions: list[int] = []
        previous: int | None = None
        for k in range(top, -1, -1):
            width, kernel = channels[k], kernels[k]
            zdim = min(latent_channels[k], width)  # a latent is never wider than its block
            pairs = nn.ModuleList()
            for _ in range(latents[k]):
                if previous is None:
                    latent: nn.Module = TopLatentBlock(width, width, zdim, width, kernel, depth)
                else:
                    latent = LatentBlock(previous, width, width, zdim, width, kernel, depth)
                conv = ConvBlock(width, width, width, kernel, residual=k > 0, depth=depth)
                pairs.append(nn.ModuleList([latent, conv]))
                self.resolutions.append(size >> k)
                previous = width
            self.levels.append(pairs)
            self.level_index.append(k)
        self.checkpointing = False

    def forward(
        self,
        skips: Sequence[Tensor] | None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        n: int = 0,
    ) -> tuple[Tensor, list[Tensor]]:
        """Decode: with encoder ``skips`` from the posteriors, else ``n`` samples from the priors.

        Returns the full-resolution state and, in posterior mode, one per-sample KL ``(B,)``
        per latent layer (coarsest first; empty in prior mode).
        """
        ckpt = self.checkpointing and self.training
        h: Tensor | None = None
        kls: list[Tensor] = []
        for k, pairs in zip(self.level_index, self.levels, strict=True):
            if h is not None:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            enc = None if skips is None else skips[k]
            for latent, conv in pairs:
                if h is None:
                    out = _maybe_checkpoint(ckpt, latent, enc, temperature, generator, n)
                else:
                    out = _maybe_checkpoint(ckpt, latent, h, enc, temperature, generator)
                if out.kl is not None:
                    kls.append(out.kl)
                h = _maybe_checkpoint(ckpt, conv, out.h)
        assert h is not None  # every level has at least one latent layer (checked by the plugin)
        return h, kls


def _maybe_checkpoint(enabled: bool, module: nn.Module, *args: object) -> LatentOutput | Tensor:
    """``module(*args)``, recomputed in the backward pass instead of stored when ``enabled`` and grads are on.

    Non-reentrant checkpointing keeps the RNG state, so a latent block draws the same noise
    when it is recomputed.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class GaussianHead(nn.Module):
    """Per-voxel Gaussian likelihood: GELU -> 1x1 (channels -> 2 * out_channels).

    The first half of the channels gives the mean through ``tanh`` (so in ``[-1, 1]``), the
    second the standard deviation ``0.01 + 0.99 * sigmoid``.
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(nn.GELU(), _conv1(channels, 2 * out_channels))
        _zero_bias(self)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation, in float32, shaped ``(B, out_channels, D, H, W)``."""
        mean, raw = self.body(h).float().split(self.out_channels, dim=1)
        return torch.tanh(mean), bounded_std(raw, OUTPUT_STD_MIN)

    @staticmethod
    def nll(mean: Tensor, std: Tensor, x: Tensor) -> Tensor:
        """Per-sample ``-sum log N(x; mean, std^2)`` over all voxels and channels, in nats (a density, not binned)."""
        z = (x.float() - mean) / std
        per_voxel = 0.5 * z**2 + torch.log(std) + _HALF_LOG_2PI
        return per_voxel.flatten(1).sum(1)
