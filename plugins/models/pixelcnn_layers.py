"""Gated PixelCNN priors over VQ-VAE-2 code grids (``models.md`` section 3.3).

Causality (raster order: row by row, left to right) comes from two feature stacks:

- the *vertical* stack at row ``i`` depends only on rows ``< i``: the first layer (``"A"``)
  reads rows ``i-2 .. i-1`` with a ``2 x 5`` kernel, later layers (``"B"``) read rows
  ``i-2 .. i`` of the vertical features, which already exclude row ``i`` of the input;
- the *horizontal* stack at ``(i, j)`` depends on rows ``< i`` (through a 1x1 link from the
  vertical stack) and on row ``i`` left of ``j``: layer A reads columns ``j-2 .. j-1`` of
  the input, layers B columns ``j-2 .. j`` of the horizontal features.

Self-attention (top prior only) runs over the ``H*W`` raster sequence of each stack with a
lower-triangular mask, so a position attends to itself and earlier positions of features
that already obey the rules above. Nothing looks below the current row, which is what lets
:func:`sample_codes` run the network on the rows sampled so far only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)
"""Cross-entropy in nats divided by this is in bits."""

_H = 2  # horizontal reach: columns j-2 .. j-1 (A) or j-2 .. j (B)
_V = 2  # vertical reach: rows i-2 .. i-1 (A) or i-2 .. i (B)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of each position of a ``(B, C, H, W)`` tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each position's channel vector."""
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedPixelConv(nn.Module):
    """One gated PixelCNN layer over a (vertical, horizontal) pair of feature maps.

    ``kind="A"`` is the first layer: its inputs are the code embeddings and it excludes the
    current position. ``kind="B"`` layers include the current position of their (already
    causal) inputs, add a residual to the horizontal stack and, with ``norm``, layer-normalise
    both outputs over channels. With ``cond_channels`` a 1x1 map of per-position
    conditioning features adds biases to the gates of both stacks.
    """

    def __init__(self, channels: int, kind: str, cond_channels: int | None = None, norm: bool = False) -> None:
        super().__init__()
        if kind not in ("A", "B"):
            raise ValueError(f"kind must be 'A' or 'B', not {kind!r}")
        self.kind = kind
        first = kind == "A"
        self.vertical = nn.Conv2d(channels, 2 * channels, (_V if first else _V + 1, 2 * _H + 1))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, _H if first else _H + 1))
        self.vert_to_horiz = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horiz_out = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Conv2d(cond_channels, 4 * channels, 1) if cond_channels else None
        self.norm_v = ChannelLayerNorm(channels) if norm else nn.Identity()
        self.norm_h = ChannelLayerNorm(channels) if norm else nn.Identity()

    def forward(self, vert: Tensor, horiz: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Apply the layer to ``(B, C, H, W)`` stacks (and ``cond`` ``(B, C_cond, H, W)``)."""
        height, width = vert.shape[-2:]
        # Padding only above and to the left: outputs never see rows below or columns to the right.
        v = self.vertical(F.pad(vert, (_H, _H, _V, 0)))[..., :height, :]
        h = self.horizontal(F.pad(horiz, (_H, 0, 0, 0)))[..., :width]
        h = h + self.vert_to_horiz(v)
        if self.cond is not None:
            if cond is None:
                raise ValueError("this layer is conditioned: pass cond")
            bias_v, bias_h = self.cond(cond).chunk(2, dim=1)
            v, h = v + bias_v, h + bias_h
        v_out = self.norm_v(_gate(v))
        h_out = self.horiz_out(_gate(h))
        if self.kind == "B":
            h_out = h_out + horiz  # layer A's input includes the current code: no residual there
        return v_out, self.norm_h(h_out)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the raster sequence of a ``(B, C, H, W)`` map, residual.

    Pre-layer-norm; position ``t`` attends to positions ``<= t`` (lower-triangular mask).
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` plus causal attention over its raster-ordered positions."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        q, k, v = self.qkv(self.norm(tokens)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class PixelAttention(nn.Module):
    """Causal self-attention applied to the vertical and the horizontal stack separately.

    Each stack attends only over its own features: mixing horizontal features (which see
    the current row) into the vertical stack would break the vertical stack's causality.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.vertical = CausalSelfAttention(channels, heads)
        self.horizontal = CausalSelfAttention(channels, heads)

    def forward(self, vert: Tensor, horiz: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend within each stack (``cond`` is unused: attention layers are unconditioned)."""
        return self.vertical(vert), self.horizontal(horiz)


class _OutResBlock(nn.Module):
    """``norm(x + conv1x1(relu(conv1x1(relu(x)))))``: per-position refinement of the logit features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 1)
        )
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.body(x))


def _gated_stack(
    channels: int, n_layers: int, cond_channels: int | None, attention_every: int, heads: int
) -> nn.ModuleList:
    """Layer A, ``n_layers - 1`` layers B, and a :class:`PixelAttention` after every ``attention_every`` layers."""
    if n_layers < 1:
        raise ValueError(f"a gated PixelCNN needs at least one layer, got {n_layers}")
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(GatedPixelConv(channels, "A" if i == 0 else "B", cond_channels, norm=i > 0))
        if attention_every and (i + 1) % attention_every == 0:
            layers.append(PixelAttention(channels, heads))
    return nn.ModuleList(layers)


class TopPrior(nn.Module):
    """Gated PixelCNN with causal self-attention over the top code grid.

    Embedding (``n_codes`` -> ``channels``), layer A then ``n_layers - 1`` layers B with
    channel layer norm; ``n_attention`` attention layers of ``heads`` heads placed after
    every ``n_layers // n_attention`` gated layers (20 layers, 4 attention layers: A+4B, attn,
    5B, attn, 5B, attn, 5B, attn). Head: both stacks concatenated, 1x1 to ``channels``,
    ``n_out_res`` residual 1x1 blocks, 1x1 to ``n_codes`` logits.
    """

    def __init__(
        self, n_codes: int, channels: int, n_layers: int, n_attention: int, heads: int, n_out_res: int
    ) -> None:
        super().__init__()
        if n_attention > n_layers:
            raise ValueError(f"{n_attention} attention layers need at least as many gated layers, got {n_layers}")
        self.embed = nn.Embedding(n_codes, channels)
        self.layers = _gated_stack(channels, n_layers, None, n_layers // n_attention if n_attention else 0, heads)
        self.head = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1),
            *[_OutResBlock(channels) for _ in range(n_out_res)],
            nn.ReLU(),
            nn.Conv2d(channels, n_codes, 1),
        )

    def forward(self, codes: Tensor) -> Tensor:
        """Logits ``(B, n_codes, H, W)`` of each code given the codes before it in raster order."""
        x = self.embed(codes).movedim(-1, 1)
        vert, horiz = x, x
        for layer in self.layers:
            vert, horiz = layer(vert, horiz)
        return self.head(torch.cat([vert, horiz], 1))


class ConditioningStack(nn.Module):
    """Top codes to per-position conditioning features on the bottom grid (twice the size).

    Embedding, ``n_res`` residual blocks of two 3x3 convolutions, then a 4x4 stride-2
    transposed convolution. The top grid is fully known when the bottom one is modelled, so
    these convolutions may look in every direction.
    """

    def __init__(self, n_codes: int, channels: int, n_res: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_codes, channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for _ in range(n_res)
        )
        self.upsample = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, codes_t: Tensor) -> Tensor:
        """Conditioning features ``(B, channels, 2h, 2w)`` of top codes ``(B, h, w)``."""
        x = self.embed(codes_t).movedim(-1, 1)
        for block in self.blocks:
            x = x + block(x)
        return self.upsample(x)


class BottomPrior(nn.Module):
    """Gated PixelCNN over the bottom code grid, conditioned on the top codes; no attention.

    Every gated layer takes per-position gate biases from the :class:`ConditioningStack`
    output. Head: both stacks concatenated, 1x1 to ``channels``, ReLU, 1x1 to logits.
    """

    def __init__(self, n_codes: int, channels: int, n_layers: int, n_cond_res: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_codes, channels)
        self.condition = ConditioningStack(n_codes, channels, n_cond_res)
        self.layers = _gated_stack(channels, n_layers, channels, 0, 1)
        self.head = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, n_codes, 1))

    def logits(self, codes_b: Tensor, cond: Tensor) -> Tensor:
        """Logits of bottom codes ``(B, H, W)`` given conditioning features ``cond`` cropped to ``H`` rows."""
        x = self.embed(codes_b).movedim(-1, 1)
        vert, horiz = x, x
        for layer in self.layers:
            vert, horiz = layer(vert, horiz, cond)
        return self.head(torch.cat([vert, horiz], 1))

    def forward(self, codes_b: Tensor, codes_t: Tensor) -> Tensor:
        """Logits ``(B, n_codes, H, W)`` of each bottom code given earlier bottom codes and all top codes."""
        return self.logits(codes_b, self.condition(codes_t))


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One code per row of ``logits`` ``(N, K)``: multinomial at ``temperature``, argmax at 0.

    Sampling runs on the generator's device (the engine passes a CPU generator even when the
    model is on CUDA), and the result returns to the logits' device.
    """
    if temperature == 0:
        return logits.argmax(1)
    probs = torch.softmax(logits.float() / temperature, dim=1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def sample_codes(
    logits_fn: Callable[[Tensor], Tensor],
    n: int,
    shape: tuple[int, int],
    temperature: float,
    generator: torch.Generator | None,
    device: torch.device,
    crop_rows: bool = True,
) -> Tensor:
    """Sample an ``(n, H, W)`` code grid in raster order.

    ``logits_fn(codes)`` maps a grid of the first ``r`` rows ``(n, r, W)`` to logits
    ``(n, K, r, W)``. With ``crop_rows`` the network sees only rows ``0 .. i`` while row ``i``
    is sampled: a causal network never looks below the current row, so this gives the same
    logits as the full grid for less work (the rows below are not yet sampled anyway).
    """
    height, width = shape
    codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
    for i in range(height):
        rows = i + 1 if crop_rows else height
        for j in range(width):
            logits = logits_fn(codes[:, :rows])[:, :, i, j]
            codes[:, i, j] = draw(logits, temperature, generator)
    return codes
