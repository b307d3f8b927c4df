"""Building blocks of VDVAE-style hierarchical VAEs as used by the paired HVAE (``phvae``).

The layout follows ``models.md`` section 1.2 (seed 000, itself derived from VDVAE and
Efficient-VDVAE, section 6):

- :class:`BottleneckBlock`: four convolutions ``1x1 -> kxk -> kxk -> 1x1``, each preceded by an
  activation (GELU, or a swish with a learnable slope), optionally residual, optionally
  followed by a learned 2x2 stride-2 downsampling convolution (:class:`Downsample`);
- :class:`Encoder`: bottom-up, keeping one activation per resolution;
- :class:`Unpool`: 1x1 convolution, nearest x2 upsampling and a learned full-resolution bias;
- :class:`TopDownBlock`: prior, posterior and translational posterior of one latent group;
- :class:`Decoder`: a learned starting state, top-down blocks from the coarsest resolution up,
  and an output head: :class:`DmolHead` (discretised logistic mixture) or :class:`MaeHead`.

Activation checkpointing (``checkpointing`` of :class:`Encoder` and :class:`Decoder`, one of
:data:`CHECKPOINTING`): ``"block"`` keeps only each block's input and recomputes the block's
activations in the backward pass, ``"resolution"`` does the same for all blocks of one
resolution at once (fewer tensors kept, a larger recomputed piece), ``"none"`` stores everything.
It applies in training mode with gradients on; values and gradients are unchanged.

Every standard deviation is ``softplus_beta(raw)`` with ``beta = ln 2`` (Efficient-VDVAE's
"gradient smoothing"): ``std = 1`` at ``raw = 0``. All images handled here live in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._common import gaussian_kl, noise

SOFTPLUS_BETA = math.log(2.0)
"""Slope of the softplus mapping raw scales to standard deviations (std = 1 at raw = 0)."""

_MIN_LOG_SCALE = -7.0  # floor of the DMOL log-scales, as in PixelCNN++ and the source
_EDGE = 0.999  # targets beyond +-_EDGE fall in the open-ended first / last bin
_MIN_BIN_PROB = 1e-5  # below this, the bin mass is approximated by density x bin width

CHECKPOINTING = ("none", "block", "resolution")
"""Activation checkpointing modes: store everything, recompute per block, recompute per resolution."""


def check_checkpointing(mode: str) -> str:
    """``mode`` if it is one of :data:`CHECKPOINTING`, else a ``ValueError`` naming the valid ones."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"checkpointing must be one of {', '.join(CHECKPOINTING)}; got {mode!r}")
    return mode


def _recompute(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; when ``enabled``, through non-reentrant ``torch.utils.checkpoint``.

    Only the arguments are kept for the backward pass; ``fn`` runs again there to rebuild what
    its backward needs. Non-reentrant checkpointing saves and restores the global RNG state
    (CPU and the arguments' CUDA devices), so noise drawn from the global stream inside ``fn``
    is the same on the recomputation and the gradients equal those of the plain call.
    """
    if enabled:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def softplus_std(raw: Tensor, temperature: float = 1.0) -> Tensor:
    """``softplus_{ln 2}(raw + log t)``: the standard deviation of a raw scale at temperature ``t``.

    ``t = 1`` leaves the scale unchanged; ``t = 0`` gives exactly zero (the mean is used).
    """
    if temperature == 0.0:
        return torch.zeros_like(raw)
    if temperature != 1.0:
        raw = raw + math.log(temperature)
    return F.softplus(raw, beta=SOFTPLUS_BETA)


def gaussian_sample(mu: Tensor, std: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``mu + std * eps`` with standard-normal ``eps`` drawn by the models' one rule (``_common.noise``)."""
    return mu + std * noise("normal", mu, generator)


class Swish(nn.Module):
    """``x * sigmoid(beta * x)`` with a learnable ``beta`` (initialised to 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(x * self.beta)


class Downsample(nn.Sequential):
    """Learned x1/2 downsampling: a 2x2 stride-2 convolution and a LeakyReLU (slope 0.01)."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, channels, 2, stride=2), nn.LeakyReLU(0.01))


class BottleneckBlock(nn.Module):
    """``1x1 (cin->mid) -> kxk -> kxk -> 1x1 (mid->cout)``, an activation before each convolution.

    Args:
        kernel: 3 for feature maps larger than 2x2, 1 otherwise (callers decide).
        residual: add the input to the output (requires ``cin == cout``).
        swish: learnable-slope swish activations instead of GELU.
        down: downsample the (residual) output by 2 with :class:`Downsample`.
        last_scale: factor applied to the initial weights of the last convolution (0 zeroes it).
    """

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        kernel: int = 3,
        residual: bool = False,
        swish: bool = False,
        down: bool = False,
        last_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if residual and cin != cout:
            raise ValueError(f"a residual block needs cin == cout, got {cin} and {cout}")
        self.residual = residual
        sizes = [(cin, mid, 1), (mid, mid, kernel), (mid, mid, kernel), (mid, cout, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, padding="same") for i, o, k in sizes)
        self.acts = nn.ModuleList(Swish() if swish else nn.GELU() for _ in sizes)
        with torch.no_grad():
            self.convs[-1].weight.mul_(last_scale)
        self.down = Downsample(cout) if down else None

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block (and the downsampling, if any)."""
        out = x
        for act, conv in zip(self.acts, self.convs, strict=True):
            out = conv(act(out))
        if self.residual:
            out = x + out
        return self.down(out) if self.down is not None else out


def resolutions(size: int, n_resolutions: int) -> list[int]:
    """The feature-map sizes of the hierarchy, finest first: ``size, size/2, ...`` (``n_resolutions`` of them)."""
    if n_resolutions < 1:
        raise ValueError(f"need at least one resolution, got {n_resolutions}")
    if size % 2 ** (n_resolutions - 1):
        raise ValueError(f"size {size} cannot be halved {n_resolutions - 1} times")
    return [size // 2**i for i in range(n_resolutions)]


class Encoder(nn.Module):
    """Bottom-up network: 3x3 input convolution, then ``blocks`` residual GELU blocks per resolution.

    The last block of every resolution but the coarsest downsamples. ``forward`` returns one
    activation per resolution: the latest tensor produced at that size. ``checkpointing``
    (module docstring) recomputes each block, or each resolution's blocks, in training.
    """

    def __init__(self, channels: int, width: int, sizes: Sequence[int], blocks: int, bottleneck: float) -> None:
        super().__init__()
        self.checkpointing = "none"
        self.blocks_per_resolution = blocks
        self.stem = nn.Conv2d(channels, width, 3, padding="same")
        n_total = len(sizes) * blocks
        mid = int(width * bottleneck)
        layers = []
        for g, size in enumerate(sizes):
            for i in range(blocks):
                down = i == blocks - 1 and g < len(sizes) - 1
                layers.append(
                    BottleneckBlock(
                        width, mid, width, 3 if size > 2 else 1, residual=True, down=down,
                        last_scale=math.sqrt(1.0 / n_total),
                    )
                )  # fmt: skip
        self.blocks = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        """Activations keyed by feature-map size, for ``x`` ``(N, C, H, W)`` in ``[-1, 1]``."""
        x = self.stem(x)
        acts = {x.shape[-1]: x}
        mode = self.checkpointing if self.training and torch.is_grad_enabled() else "none"
        if mode == "resolution":
            per = self.blocks_per_resolution
            for start in range(0, len(self.blocks), per):
                outs = _recompute(True, _run_blocks, self.blocks[start : start + per], x)
                for out in outs:
                    acts[out.shape[-1]] = out
                x = outs[-1]
            return acts
        for block in self.blocks:
            x = _recompute(mode == "block", block, x)
            acts[x.shape[-1]] = x
        return acts


def _run_blocks(blocks: Sequence[nn.Module], x: Tensor) -> tuple[Tensor, ...]:
    """The output of every block of ``blocks`` applied in turn to ``x``."""
    outs = []
    for block in blocks:
        x = block(x)
        outs.append(x)
    return tuple(outs)


class Unpool(nn.Module):
    """1x1 convolution, nearest x2 upsampling, plus a learned bias of the output's full size."""

    def __init__(self, channels: int, size_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bias = nn.Parameter(torch.zeros(1, channels, size_out, size_out))

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` by 2."""
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest") + self.bias


class TopDownBlock(nn.Module):
    """One latent group: prior, posterior and (optionally) translational posterior.

    - prior ``p(z | h)``: ``h -> (mu, raw, delta)``; the last convolution's weights start at
      zero (its bias keeps PyTorch's default init, as in the source), so the prior starts
      input-independent and ``delta`` (added to ``h``) starts small;
    - posterior ``q(z | h, e)`` on ``concat(h, e)`` with ``e`` the own encoder's activation;
    - translational posterior on ``concat(h, e')`` with ``e'`` the *other* modality's encoder
      activation: it predicts only the second ("content") half of the latents; the first
      ("style") half keeps the prior's mean and scale.

    ``h <- resblock(h + delta + z_proj(z))`` with ``z_proj`` and the resblock's last
    convolution scaled by ``sqrt(1 / n_blocks)`` at init.
    """

    def __init__(self, size: int, width: int, zdim: int, n_blocks: int, bottleneck: float, translational: bool) -> None:
        super().__init__()
        if translational and zdim % 2:
            raise ValueError(f"the translational posterior splits the latents in halves: zdim must be even, got {zdim}")
        kernel = 3 if size > 2 else 1
        mid = int(width * bottleneck)
        self.size, self.zdim, self.width = size, zdim, width
        self.prior = BottleneckBlock(width, mid, 2 * zdim + width, kernel, swish=True, last_scale=0.0)
        self.posterior = BottleneckBlock(2 * width, mid, 2 * zdim, kernel, swish=True)
        self.translational = BottleneckBlock(2 * width, mid, zdim, kernel, swish=True) if translational else None
        self.z_proj = nn.Conv2d(zdim, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1.0 / n_blocks))
        self.resnet = BottleneckBlock(width, mid, width, kernel, residual=True, last_scale=math.sqrt(1.0 / n_blocks))

    def _prior(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.prior(h)
        return out[:, : self.zdim], out[:, self.zdim : 2 * self.zdim], out[:, 2 * self.zdim :]

    def forward(
        self,
        h: Tensor,
        act: Tensor,
        translate: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The next decoder state and the KL map ``(N, zdim, r, r)`` (nats), from ``h`` and ``act``.

        ``act`` is an encoder activation of this block's size.

        ``translate`` uses the translational posterior (``act`` then comes from the other
        modality's encoder). ``temperature`` scales the posterior's standard deviation.
        The KL is taken at temperature 1 (it describes the model, not the sampling).
        """
        p_mu, p_raw, delta = self._prior(h)
        joint = torch.cat([h, act], dim=1)
        if translate:
            if self.translational is None:
                raise ValueError("this decoder was built without translational posteriors")
            half = self.zdim // 2
            c_mu, c_raw = self.translational(joint).chunk(2, dim=1)
            q_mu = torch.cat([p_mu[:, :half], c_mu], dim=1)
            q_raw = torch.cat([p_raw[:, :half], c_raw], dim=1)
        else:
            q_mu, q_raw = self.posterior(joint).chunk(2, dim=1)
        # The KL and its softplus run in float32: under fp16 autocast small scales underflow.
        kl = gaussian_kl(
            q_mu.float(), softplus_std(q_raw.float()), p_mu.float(), softplus_std(p_raw.float())
        )  # fmt: skip
        z = gaussian_sample(q_mu, softplus_std(q_raw, temperature), generator)
        return self.resnet(h + delta + self.z_proj(z)), kl

    def sample(self, h: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Advance ``h`` with a latent drawn from the prior at ``temperature``."""
        p_mu, p_raw, delta = self._prior(h)
        z = gaussian_sample(p_mu, softplus_std(p_raw, temperature), generator)
        return self.resnet(h + delta + self.z_proj(z))


def _uniform(like: Tensor, generator: torch.Generator | None, eps: float) -> Tensor:
    """Uniform noise shaped like ``like`` in ``[eps, 1 - eps]`` (drawn by ``_common.noise``'s rule)."""
    return noise("uniform", like, generator).clamp(eps, 1.0 - eps)


class DmolHead(nn.Module):
    """Discretised mixture of logistics over ``2**bits`` levels in ``[-1, 1]`` (PixelCNN++ style).

    A 1x1 convolution gives, per pixel: ``M`` mixture logits, ``C*M`` means, ``C*M`` raw scales
    (``softplus_{ln 2}``, log-scale floored at -7) and ``C(C-1)/2 * M`` tanh coefficients that
    make channel ``c``'s mean depend linearly on channels ``< c`` (the RGB autoregression).
    Bin centres are ``-1 + 2k / (2**bits - 1)``; the bin half-width is ``1 / (2**bits - 1)``.
    """

    def __init__(self, width: int, channels: int, mixtures: int = 1, bits: int = 6) -> None:
        super().__init__()
        self.channels, self.mixtures, self.bits = channels, mixtures, bits
        self.n_coeffs = channels * (channels - 1) // 2
        self.conv = nn.Conv2d(width, mixtures * (1 + 2 * channels + self.n_coeffs), 1)

    def forward(self, features: Tensor) -> Tensor:
        """Distribution parameters ``(N, M(1 + 2C + C(C-1)/2), H, W)`` (float32)."""
        return self.conv(features).float()

    def _unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, _, h, w = params.shape
        m, c = self.mixtures, self.channels
        logits = params[:, :m]
        means = params[:, m : m + c * m].reshape(n, c, m, h, w)
        raw = params[:, m + c * m : m + 2 * c * m].reshape(n, c, m, h, w)
        log_scales = torch.log(F.softplus(raw, beta=SOFTPLUS_BETA)).clamp(min=_MIN_LOG_SCALE)
        coeffs = torch.tanh(params[:, m + 2 * c * m :]).reshape(n, self.n_coeffs, m, h, w)
        return logits, means, log_scales, coeffs

    def _chain_means(self, means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
        """Means of each channel shifted by ``coeff * x`` of every earlier channel (``x``: ``(N, C, 1|M, H, W)``)."""
        out, k = [means[:, :1]], 0
        for c in range(1, self.channels):
            mean = means[:, c]
            for j in range(c):
                mean = mean + coeffs[:, k] * x[:, j]
                k += 1
            out.append(mean[:, None])
        return torch.cat(out, dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-probability (nats) of target ``x`` ``(N, C, H, W)`` in ``[-1, 1]`` per pixel: ``(N, H, W)``."""
        logits, means, log_scales, coeffs = self._unpack(params)
        x = x.float()[:, :, None]  # (N, C, 1, H, W): broadcast over mixtures
        centred = x - self._chain_means(means, coeffs, x)
        inv_s = torch.exp(-log_scales)
        half = 1.0 / (2**self.bits - 1)
        plus, minus = inv_s * (centred + half), inv_s * (centred - half)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): mass of the first bin
        log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): mass of the last bin
        delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centred
        # For bins so thin that the difference of sigmoids loses precision: density x bin width.
        log_mid = mid - log_scales - 2.0 * F.softplus(mid) + math.log(2.0 * half)
        inner = torch.where(delta > _MIN_BIN_PROB, torch.log(delta.clamp(min=1e-12)), log_mid)
        per_channel = torch.where(x < -_EDGE, log_cdf_plus, torch.where(x > _EDGE, log_sf_minus, inner))
        return torch.logsumexp(per_channel.sum(dim=1) + F.log_softmax(logits, dim=1), dim=1)

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood per sample in nats per dimension (``C*H*W``): ``(N,)``."""
        return -self.log_prob(params, x).sum(dim=(1, 2)) / x[0].numel()

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Draw an image in ``[-1, 1]``; the logistic noise is scaled by ``temperature`` (0: the means).

        The mixture component is drawn from the logits (Gumbel-max) for ``t > 0`` and is the
        most likely one at ``t = 0``, so ``t = 0`` is deterministic for any number of mixtures.
        """
        logits, means, log_scales, coeffs = self._unpack(params)
        if temperature > 0:
            logits = logits - torch.log(-torch.log(_uniform(logits, generator, 1e-10)))
        pick = F.one_hot(logits.argmax(dim=1), self.mixtures).permute(0, 3, 1, 2).to(means.dtype)[:, None]
        mean = (means * pick).sum(dim=2)
        log_scale = (log_scales * pick).sum(dim=2)
        coeff = (coeffs * pick).sum(dim=2)
        x = mean
        if temperature > 0:
            u = _uniform(mean, generator, 1e-5)
            x = mean + temperature * torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        out, k = [], 0
        for c in range(self.channels):
            value = x[:, c]
            for j in range(c):
                value = value + coeff[:, k] * out[j]
                k += 1
            out.append(value.clamp(-1.0, 1.0))
        return torch.stack(out, dim=1)


class MaeHead(nn.Module):
    """A 1x1 convolution and a sigmoid: the image in ``[0, 1]``, trained by mean absolute error."""

    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(width, channels, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Pre-sigmoid outputs ``(N, C, H, W)`` (float32)."""
        return self.conv(features).float()

    def mae(self, params: Tensor, x: Tensor) -> Tensor:
        """Mean absolute error per sample, in ``[0, 1]`` units, of target ``x`` given in ``[-1, 1]``."""
        return (torch.sigmoid(params) - (x.float() + 1.0) / 2.0).abs().mean(dim=(1, 2, 3))

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """The deterministic output mapped to ``[-1, 1]`` (this head has no noise to scale)."""
        return 2.0 * torch.sigmoid(params) - 1.0


class Decoder(nn.Module):
    """Top-down network from the coarsest resolution to the finest, with an output head.

    Starts from a learned ``(1, width, r, r)`` state at the coarsest size ``r``; runs
    ``blocks`` :class:`TopDownBlock` per resolution with an :class:`Unpool` between
    resolutions; applies a per-channel gain and bias, then the head. ``checkpointing`` (module
    docstring) recomputes each top-down block, or each resolution's unpooling and blocks, in
    training; a call given an explicit ``generator`` is never checkpointed (checkpointing
    replays the global RNG stream only).
    """

    def __init__(
        self,
        channels: int,
        width: int,
        sizes: Sequence[int],
        blocks: int,
        zdim: int,
        bottleneck: float,
        translational: bool,
        head: str,
        mixtures: int = 1,
        bits: int = 6,
    ) -> None:
        super().__init__()
        self.checkpointing = "none"
        coarse_to_fine = sorted(sizes)
        n_total = len(sizes) * blocks
        self.start = nn.Parameter(torch.zeros(1, width, coarse_to_fine[0], coarse_to_fine[0]))
        layers: list[nn.Module] = []
        self._resolution_slices: list[slice] = []  # the layers of each resolution (its Unpool, then its blocks)
        for g, size in enumerate(coarse_to_fine):
            start = len(layers)
            if g > 0:
                layers.append(Unpool(width, size))
            layers += [TopDownBlock(size, width, zdim, n_total, bottleneck, translational) for _ in range(blocks)]
            self._resolution_slices.append(slice(start, len(layers)))
        self.layers = nn.ModuleList(layers)
        self.gain = nn.Parameter(torch.ones(1, width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, width, 1, 1))
        if head == "dmol":
            self.head: DmolHead | MaeHead = DmolHead(width, channels, mixtures, bits)
        elif head == "mae":
            self.head = MaeHead(width, channels)
        else:
            raise ValueError(f"unknown output head {head!r}; expected 'dmol' or 'mae'")

    @property
    def groups(self) -> list[TopDownBlock]:
        """The latent groups, coarsest first."""
        return [m for m in self.layers if isinstance(m, TopDownBlock)]

    def forward(
        self,
        acts: dict[int, Tensor],
        translate: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Head parameters and the per-group KL maps, decoding encoder activations ``acts``."""
        n = next(iter(acts.values())).shape[0]
        h = self.start.expand(n, -1, -1, -1)
        kls: list[Tensor] = []
        on = self.training and torch.is_grad_enabled() and generator is None
        mode = self.checkpointing if on else "none"
        if mode == "resolution":
            for part in self._resolution_slices:
                layers = self.layers[part]
                size = layers[-1].size
                h, *group_kls = _recompute(True, _decode, layers, h, acts[size], translate, temperature, generator)
                kls += group_kls
        else:
            for layer in self.layers:
                if isinstance(layer, TopDownBlock):
                    h, kl = _recompute(mode == "block", layer, h, acts[layer.size], translate, temperature, generator)
                    kls.append(kl)
                else:
                    h = layer(h)
        return self.head(h * self.gain + self.bias), kls

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Head parameters of ``n`` draws from the prior at ``temperature``."""
        h = self.start.expand(n, -1, -1, -1)
        for layer in self.layers:
            h = layer.sample(h, temperature, generator) if isinstance(layer, TopDownBlock) else layer(h)
        return self.head(h * self.gain + self.bias)


def _decode(
    layers: Sequence[nn.Module],
    h: Tensor,
    act: Tensor,
    translate: bool,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, ...]:
    """Run the layers of one resolution (an optional :class:`Unpool`, then top-down blocks
    using the encoder activation ``act`` of that size): the new state, then each block's KL map."""
    kls = []
    for layer in layers:
        if isinstance(layer, TopDownBlock):
            h, kl = layer(h, act, translate, temperature, generator)
            kls.append(kl)
        else:
            h = layer(h)
    return (h, *kls)


class HVAE(nn.Module):
    """One modality's hierarchical VAE: bottom-up encoder, top-down decoder and output head."""

    def __init__(
        self,
        channels: int,
        size: int,
        width: int,
        n_resolutions: int,
        blocks: int,
        zdim: int,
        bottleneck: float,
        translational: bool,
        head: str,
        mixtures: int = 1,
        bits: int = 6,
    ) -> None:
        super().__init__()
        sizes = resolutions(size, n_resolutions)
        self.channels, self.size = channels, size
        self.encoder = Encoder(channels, width, sizes, blocks, bottleneck)
        self.decoder = Decoder(channels, width, sizes, blocks, zdim, bottleneck, translational, head, mixtures, bits)

    def set_checkpointing(self, mode: str) -> None:
        """Activation checkpointing of the encoder and the decoder: one of :data:`CHECKPOINTING`."""
        self.encoder.checkpointing = self.decoder.checkpointing = check_checkpointing(mode)

    def recon_term(self, params: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction loss: DMOL NLL (nats/dim) or MAE (``[0, 1]`` units)."""
        head = self.decoder.head
        return head.nll(params, x) if isinstance(head, DmolHead) else head.mae(params, x)
