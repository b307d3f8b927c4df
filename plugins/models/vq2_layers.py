"""The two-level VQ-VAE-2 network shared by the ``vqvae2`` and ``pixelcnn`` model plugins.

Two layer layouts reproduce the two sources (``models.md`` sections 3.2 and 5.1):

- ``"rosinality"`` (seed 004): residual blocks without normalisation, a stride-4 bottom
  encoder and a stride-2 top encoder, decoders mirroring them; the blocks of
  :mod:`vq_layers` are reused.
- ``"bn_dropout"`` (seed 002): every convolution followed by batch norm, residual layers
  ending in batch norm and dropout, and a downsampling count derived from the input and
  latent sizes (``log2(in / out)``), here one halving per level for a 64 -> 32 -> 16 stack.

Both share the VQ-VAE-2 wiring: bottom features -> top encoder -> top quantiser; top
decoder output concatenated with the bottom features -> bottom quantiser; decoding
upsamples the top codes with a transposed convolution and concatenates them with the
bottom codes. Both quantisers are EMA codebooks, which move only in training mode.

This module also holds the VQ-VAE part of the named configs, the input checks and the
per-level code statistics, so the two plugins agree on them without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench_core.api import DataSpec

from ._common import by_order, check_shape, eval_mode, source_error
from .vq_layers import CodeUsage, Decoder, QuantizerOutput, StridedEncoder, VectorQuantizerEMA

LAYOUTS = ("rosinality", "bn_dropout")

VQ2_SEED002: dict[str, Any] = {
    # models.md 3.2: ResponsiveVQVAE2 on 64x64 OASIS slices (bottom 32x32, top 16x16).
    "layers": "bn_dropout",
    "hidden": 128,
    "res_hidden": 32,
    "n_res_layers": 2,
    "dropout": 0.2,
    "embedding_dim": 64,
    "n_embeddings": 512,
    "beta": 0.25,
    # log2(64 / 32): one halving from the image to the bottom grid (the top adds one more).
    "bottom_down": 1,
    "ema_decay": 0.99,
    "eps": 1e-5,
    "dead_code_restart": False,
    "dead_code_threshold": 1.0,
    "lr": 1e-3,
    "batch_size": 64,
    # 100 epochs of the 9 664-slice PNG training split at batch 64 (151 steps per epoch).
    "steps": 15_100,
    "channels_last": False,
}

VQ2_SEED004: dict[str, Any] = {
    **VQ2_SEED002,
    # models.md 5.1 / 5.3: rosinality layers on 256x128 HipMRI slices (bottom 64x32, top 32x16).
    "layers": "rosinality",
    "dropout": 0.0,
    "bottom_down": 2,
    "lr": 3e-5,
    "batch_size": 10,
    # 20 epochs of the 11 460-slice training split at batch 10 (the committed training log).
    "steps": 22_920,
}

VQ2_TINY: dict[str, Any] = {
    **VQ2_SEED004,
    # A 1-thread CPU quickstart on 64x32 or 64x64 images: 200 steps in well under a minute.
    "hidden": 32,
    "res_hidden": 8,
    "n_res_layers": 1,
    "embedding_dim": 16,
    "n_embeddings": 64,
    # Short runs collapse a randn-initialised EMA codebook onto a few codes without restarts.
    "dead_code_restart": True,
    "lr": 2e-3,
    "batch_size": 16,
    "steps": 200,
}


def input_problem(name: str, spec: DataSpec, bottom_down: int) -> str | None:
    """Why a VQ-VAE-2 with ``bottom_down`` halvings to the bottom grid cannot serve ``spec``."""
    if spec.dims != 2:
        return f"{name} is 2D; dataset is {spec.dims}D"
    if len(spec.modalities) != 1:
        return f"{name} models single-modality data; dataset is paired ({', '.join(spec.modalities)})"
    factor = 2 ** (bottom_down + 1)  # the top grid is one more halving below the bottom grid
    if any(size % factor for size in spec.shape):
        return f"spatial shape {tuple(spec.shape)} must be divisible by {factor} (bottom and top downsampling)"
    return None


def latent_shapes(shape: tuple[int, ...], bottom_down: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top and bottom code-grid shapes for an input of spatial ``shape``."""
    h, w = shape
    bottom = (h // 2**bottom_down, w // 2**bottom_down)
    return (bottom[0] // 2, bottom[1] // 2), bottom


class BNResidualStack(nn.Sequential):
    """Seed 002's residual stack: layers ``r + drop(bn(conv1x1(relu(conv3x3(r)))))`` with ``r = relu(x)``, then ReLU.

    The skip carries ``relu(x)``, not ``x``: the source's block opens with an in-place ReLU,
    which rewrites the tensor its skip adds. Both convolutions have no bias (batch norm
    follows); dropout is active only in training.
    """

    def __init__(self, channels: int, hidden: int, n_layers: int, dropout: float) -> None:
        super().__init__(*[_BNResLayer(channels, hidden, dropout) for _ in range(n_layers)], nn.ReLU())


class _BNResLayer(nn.Module):
    def __init__(self, channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.body(x)


class StemFirstBNEncoder(nn.Sequential):
    """A 3x3 stem convolution first (seed 002's encoder): downsample by ``2**n_down`` to ``hidden`` channels.

    Unlike :class:`vq_layers.StridedEncoder`, the strided convolutions come after a stem and
    every convolution is batch-normalised: 3x3 conv to ``hidden / 2**n_down`` + BN + ReLU,
    ``n_down`` 4x4 stride-2 convs doubling the channels (each + BN + ReLU), a 3x3 conv + BN,
    then a :class:`BNResidualStack`.
    """

    def __init__(
        self, in_channels: int, hidden: int, res_hidden: int, n_res_layers: int, n_down: int, dropout: float
    ) -> None:
        if n_down < 1 or hidden % 2**n_down:
            raise ValueError(f"hidden={hidden} must be divisible by 2**n_down with n_down={n_down} >= 1")
        channels = hidden // 2**n_down
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(n_down):
            layers += [nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.BatchNorm2d(2 * channels)]
            layers.append(nn.ReLU())
            channels *= 2
        layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden)]
        layers.append(BNResidualStack(hidden, res_hidden, n_res_layers, dropout))
        super().__init__(*layers)


class BNDecoder(nn.Sequential):
    """Seed 002's decoder: upsample by ``2**n_up`` to ``out_channels``.

    3x3 conv to ``hidden`` + BN, a :class:`BNResidualStack`, ``n_up`` 4x4 stride-2 transposed
    convs halving the channels (each + BN + ReLU), then a 3x3 transposed conv to
    ``out_channels`` without normalisation or activation (outputs keep the data's range).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        res_hidden: int,
        n_res_layers: int,
        n_up: int,
        dropout: float,
    ) -> None:
        if n_up < 1 or hidden % 2**n_up:
            raise ValueError(f"hidden={hidden} must be divisible by 2**n_up with n_up={n_up} >= 1")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            BNResidualStack(hidden, res_hidden, n_res_layers, dropout),
        ]
        channels = hidden
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1)]
            layers += [nn.BatchNorm2d(channels // 2), nn.ReLU()]
            channels //= 2
        layers.append(nn.ConvTranspose2d(channels, out_channels, 3, padding=1))
        super().__init__(*layers)


@dataclass
class VQ2Output:
    """Reconstruction and the two quantiser outputs of a :class:`VQVAE2Net` forward pass."""

    reconstruction: Tensor
    top: QuantizerOutput
    bottom: QuantizerOutput


class VQVAE2Net(nn.Module):
    """Two-level VQ-VAE-2 (top and bottom EMA codebooks) for ``in_channels``-channel images.

    The bottom grid is the input downsampled ``2**bottom_down`` times, the top grid half of
    it. ``config`` holds the keys of :data:`VQ2_SEED004` (layout, widths, codebook sizes,
    EMA settings).
    """

    def __init__(self, in_channels: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        if config["layers"] not in LAYOUTS:
            raise ValueError(f"unknown layers {config['layers']!r}; valid: {', '.join(LAYOUTS)}")
        hidden, dim = config["hidden"], config["embedding_dim"]
        res = (config["res_hidden"], config["n_res_layers"])
        down, drop = config["bottom_down"], config["dropout"]
        rosinality = config["layers"] == "rosinality"
        ema = {
            "decay": config["ema_decay"],
            "eps": config["eps"],
            "dead_code_restart": config["dead_code_restart"],
            "dead_code_threshold": config["dead_code_threshold"],
        }
        # Modules are created in the order each source creates its own, so one seed gives the
        # source's initial weights: seed 004 builds both quantisers before the top decoder, seed 002
        # (like rosinality's original) builds the top decoder between them.
        if rosinality:
            self.enc_b = StridedEncoder(in_channels, hidden, *res, down, narrow_first=True)
            self.enc_t = StridedEncoder(hidden, hidden, *res, 1, narrow_first=True)
        else:
            self.enc_b = StemFirstBNEncoder(in_channels, hidden, *res, down, drop)
            self.enc_t = StemFirstBNEncoder(hidden, hidden, *res, 1, drop)
        self.quantize_conv_t = nn.Conv2d(hidden, dim, 1)
        self.quantize_t = VectorQuantizerEMA(dim, config["n_embeddings"], **ema)
        if not rosinality:
            self.dec_t = BNDecoder(dim, dim, hidden, *res, 1, drop)
        self.quantize_conv_b = nn.Conv2d(dim + hidden, dim, 1)
        self.quantize_b = VectorQuantizerEMA(dim, config["n_embeddings"], **ema)
        if rosinality:
            self.dec_t = Decoder(dim, dim, hidden, *res, 1)
        self.upsample_t = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        if rosinality:
            self.dec = Decoder(2 * dim, in_channels, hidden, *res, down)
        else:
            self.dec = BNDecoder(2 * dim, in_channels, hidden, *res, down, drop)
        # The final decoder's input: rosinality concatenates [upsampled top, bottom], seed 002
        # [bottom, upsampled top] (the order its weights were trained with).
        self.bottom_first = not rosinality

    def encode(self, x: Tensor) -> tuple[QuantizerOutput, QuantizerOutput]:
        """Quantise ``x`` ``(B, C, H, W)``: the top and bottom quantiser outputs."""
        feat_b = self.enc_b(x)
        top = self.quantize_t(self.quantize_conv_t(self.enc_t(feat_b)))
        # The bottom level encodes what the (straight-through) top codes do not explain.
        bottom = self.quantize_b(self.quantize_conv_b(torch.cat([self.dec_t(top.quantized), feat_b], 1)))
        return top, bottom

    def decode(self, quant_t: Tensor, quant_b: Tensor) -> Tensor:
        """Decode quantised top ``(B, D, h, w)`` and bottom ``(B, D, 2h, 2w)`` latents to images."""
        up = self.upsample_t(quant_t)
        return self.dec(torch.cat([quant_b, up] if self.bottom_first else [up, quant_b], 1))

    def decode_codes(self, codes_t: Tensor, codes_b: Tensor) -> Tensor:
        """Decode top ``(B, h, w)`` and bottom ``(B, 2h, 2w)`` code-index grids to images."""
        return self.decode(self.quantize_t.lookup(codes_t), self.quantize_b.lookup(codes_b))

    def forward(self, x: Tensor) -> VQ2Output:
        """Encode, quantise and decode ``x``."""
        top, bottom = self.encode(x)
        return VQ2Output(self.decode(top.quantized, bottom.quantized), top, bottom)

    def loss(self, x: Tensor, beta: float) -> dict[str, Tensor]:
        """``MSE(x_hat, x) + beta * (commit_top + commit_bottom)`` plus detached terms to log.

        The codebooks learn by EMA only, so there is no codebook loss term.
        """
        out = self(x)
        recon = F.mse_loss(out.reconstruction, x)
        total = recon + beta * (out.top.commitment + out.bottom.commitment)
        return {
            "loss": total,
            "recon": recon.detach(),
            "commit_top": out.top.commitment.detach(),
            "commit_bottom": out.bottom.commitment.detach(),
            "perplexity_top": out.top.perplexity.detach(),
            "perplexity_bottom": out.bottom.perplexity.detach(),
        }


def to_memory_format(module: nn.Module, x: Tensor, channels_last: bool) -> Tensor:
    """With ``channels_last`` on a CUDA input, put ``module`` and ``x`` in channels-last format.

    Converting the module in place keeps its parameter objects, so an optimiser built before
    the first batch still holds them. On CPU, or with the option off, both are left alone.
    """
    if not (channels_last and x.is_cuda and x.dim() == 4):
        return x
    module.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def level_usage(net: VQVAE2Net, images: Iterable[Tensor]) -> dict[str, float]:
    """Per-level codebook usage, perplexity and dead codes over ``images`` (eval mode, no grad).

    Keys are ``top.codebook_usage``, ``top.perplexity``, ``top.dead_codes`` and the same
    under ``bottom.``.
    """
    usage = {"top": CodeUsage(net.quantize_t.n_embeddings), "bottom": CodeUsage(net.quantize_b.n_embeddings)}
    with eval_mode(net), torch.no_grad():
        for x in images:
            top, bottom = net.encode(x)
            usage["top"].update(top.indices)
            usage["bottom"].update(bottom.indices)
    return {f"{level}.{k}": v for level, counter in usage.items() for k, v in counter.summary().items()}


# -- source checkpoints -------------------------------------------------------------------------

# Our top-level modules and each source's names for them, in the order both create them.
_SOURCE_NAMES = {
    "rosinality": {
        "enc_b": "enc_b",
        "enc_t": "enc_t",
        "quantize_conv_t": "quantize_conv_t",
        "quantize_t": "quantize_t",
        "dec_t": "dec_t",
        "quantize_conv_b": "quantize_conv_b",
        "quantize_b": "quantize_b",
        "upsample_t": "upsample_t",
        "dec": "dec",
    },
    "bn_dropout": {
        "enc_b": "encoder_1",
        "enc_t": "encoder_2",
        "quantize_conv_t": "pre_vq_conv_2",
        "quantize_t": "quantize_2",
        "dec_t": "decoder_2",
        "quantize_conv_b": "pre_vq_conv_1",
        "quantize_b": "quantize_1",
        "upsample_t": "upsample_1",
        "dec": "decoder_1",
    },
}
_SOURCE_LABELS = {"rosinality": "seed 004 (rosinality VQ-VAE-2)", "bn_dropout": "seed 002 (ResponsiveVQVAE2)"}
_QUANTIZER_KEYS = {"codebook": "embed", "cluster_size": "cluster_size", "embed_avg": "embed_avg"}


def source_layout(state: Mapping[str, Any]) -> str | None:
    """``"rosinality"`` or ``"bn_dropout"`` for a source VQ-VAE-2 state dict, from its keys; else ``None``."""
    for layout, names in _SOURCE_NAMES.items():
        if f"{names['quantize_t']}.embed" in state and f"{names['quantize_b']}.embed" in state:
            return layout
    return None


def source_spec(model: str, state: Mapping[str, Tensor], config: Mapping[str, Any]) -> DataSpec:
    """A data spec a source VQ-VAE-2 state dict fits: its image channels (the input width of its
    first convolution) and a square shape its grids divide."""
    layout = source_layout(state)
    if layout is None:
        raise source_error(model, "no quantiser codebooks (quantize_t/b or quantize_2/1 .embed) in the VQ-VAE-2 file")
    prefix = _SOURCE_NAMES[layout]["enc_b"] + "."
    first = next(v for k, v in state.items() if k.startswith(prefix) and k.endswith("weight"))
    side = 2 ** (config["bottom_down"] + 3)
    return DataSpec(("image",), (int(first.shape[1]),), 2, (side, side), (-1.0, 1.0))


def vq2_from_source(
    model: str, layout: str, target: Mapping[str, Tensor], state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Our :class:`VQVAE2Net` state (keys of ``target``, without prefix) from a source state dict.

    Each of our top-level modules takes the tensors of the source module of the same role,
    paired in registration order (both are built in the source's order); codebooks are
    transposed from the sources' ``(dim, n_embeddings)``. Every source key must be used.
    """
    found = source_layout(state)
    if found != layout:
        what = _SOURCE_LABELS.get(found or "", "not a VQ-VAE-2 state dict this plugin knows")
        raise source_error(
            model, f"the file holds {what}; the config's layout is {layout!r} ({_SOURCE_LABELS[layout]})"
        )
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for ours, theirs in _SOURCE_NAMES[layout].items():
        mine = {k: v for k, v in target.items() if k.startswith(ours + ".")}
        src = {k: v for k, v in state.items() if k.startswith(theirs + ".")}
        used.update(src)
        if ours in ("quantize_t", "quantize_b"):
            for key, like in mine.items():
                name = f"{theirs}.{_QUANTIZER_KEYS[key.split('.', 1)[1]]}"
                if name not in src:
                    raise source_error(model, f"missing key {name} (for {key})")
                value = src[name].t() if src[name].dim() == 2 else src[name]
                out[key] = check_shape(model, key, name, value, like.shape)
            extra = sorted(set(src) - {f"{theirs}.{n}" for n in _QUANTIZER_KEYS.values()})
            if extra:
                raise source_error(model, f"unknown key {extra[0]}")
            continue
        out.update(by_order(model, mine, src, f"{theirs} -> {ours}"))
    unknown = sorted(set(state) - used)
    if unknown:
        raise source_error(model, f"unknown {len(unknown)} key(s), e.g. {', '.join(unknown[:3])}")
    return {k: v.contiguous() for k, v in out.items()}
