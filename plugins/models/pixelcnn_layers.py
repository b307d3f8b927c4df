"""Gated PixelCNN priors over VQ-VAE-2 code grids, as seed 002 builds them (``models.md`` 3.3).

Seed 002 takes its priors from unixpickle's vq-vae-2 (``docs/fidelity.md``). This module
reproduces that network exactly, layer by layer, in the order its modules are created (so one
seed gives the same initial weights), and only the widths, depths and vocabulary are
configurable. Causality (raster order: row by row, left to right) comes from two feature
stacks:

- the *vertical* stack at row ``i`` depends only on rows ``< i``: the first layer (``"A"``)
  reads rows ``i-2 .. i-1`` with a ``2 x 5`` kernel, later layers (``"B"``) read rows
  ``i-2 .. i`` of the vertical features, which already exclude row ``i`` of the input;
- the *horizontal* stack at ``(i, j)`` depends on rows ``< i`` (through a 1x1 link from the
  vertical stack) and on row ``i`` left of ``j``: layer A reads columns ``j-2 .. j-1`` of
  the input, layers B columns ``j-2 .. j`` of the horizontal features.

Layer B (as the source): the vertical output is layer-normalised over channels; the
horizontal output is ``input + norm(conv1x1(gated))``, the norm on the branch before the
residual add. Layer A has neither the norm nor the 1x1 residual branch.

Self-attention (top prior only): one attention module, shared by the two stacks and applied
to each of them separately over its ``H*W`` raster sequence with a lower-triangular mask,
added to its input (no normalisation). A position attends to itself and earlier positions of
features that already obey the rules above. Nothing looks below the current row, which is
what lets :func:`sample_codes` run the network on the rows sampled so far only.
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
    """Layer norm over the channels of each position of a ``(B, C, H, W)`` tensor.

    The result is a channels-last view (no copy back to the contiguous layout): the priors run
    channels-last throughout (see :func:`_channels_last`).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each position's channel vector."""
        return self.norm(x.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)


def _gate(x: Tensor) -> Tensor:
    # chunk, not two slices: its backward is one concatenation instead of two zero-filled copies.
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedPixelConv(nn.Module):
    """One gated PixelCNN layer over a (vertical, horizontal) pair of feature maps.

    ``kind="A"`` is the first layer: its input is the code embedding, it excludes the current
    position and returns the two gated stacks. ``kind="B"`` layers include the current
    position of their (already causal) inputs; the horizontal stack gets a 1x1 residual
    branch, and with ``norm`` both outputs are layer-normalised over channels (the horizontal
    one on the branch, before the add). With ``cond_channels`` a per-position linear map of
    the conditioning features adds biases to the gates of both stacks.
    """

    def __init__(self, channels: int, kind: str, cond_channels: int | None = None, norm: bool = False) -> None:
        super().__init__()
        if kind not in ("A", "B"):
            raise ValueError(f"kind must be 'A' or 'B', not {kind!r}")
        self.kind = kind
        self.channels = channels
        first = kind == "A"
        # Created in the source's order, so a seed gives the source's initial weights.
        self.vertical = nn.Conv2d(channels, 2 * channels, (_V if first else _V + 1, 2 * _H + 1))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, _H if first else _H + 1))
        self.vert_to_horiz = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.cond = nn.Linear(cond_channels, 4 * channels) if cond_channels else None
        self.horiz_out = None if first else nn.Conv2d(channels, channels, 1)
        self.norm_v = ChannelLayerNorm(channels) if norm and not first else None
        self.norm_h = ChannelLayerNorm(channels) if norm and not first else None

    def forward(self, vert: Tensor, horiz: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Apply the layer to ``(B, C, H, W)`` stacks (and ``cond`` ``(B, C_cond, H, W)``)."""
        height, width = vert.shape[-2:]
        # Padding only above and to the left: outputs never see rows below or columns to the right.
        v = self.vertical(F.pad(vert, (_H, _H, _V, 0)))[:, :, :height, :]
        h = self.horizontal(F.pad(horiz, (_H, 0, 0, 0)))[:, :, :, :width]
        h = h + self.vert_to_horiz(v)
        if self.cond is not None:
            if cond is None:
                raise ValueError("this layer is conditioned: pass cond")
            # The linear map of each position's conditioning vector, as a 1x1 convolution with the
            # same weights: channel-first biases without layout copies.
            bias = F.conv2d(cond, self.cond.weight[:, :, None, None], self.cond.bias)
            bias_v, bias_h = bias.chunk(2, dim=1)
            v, h = v + bias_v, h + bias_h
        v, h = _gate(v), _gate(h)
        if self.horiz_out is None:
            return v, h
        branch = self.horiz_out(h)
        if self.norm_h is not None:
            v, branch = self.norm_v(v), self.norm_h(branch)
        return v, horiz + branch


class PixelAttention(nn.Module):
    """Causal multi-head self-attention shared by both stacks, residual, without normalisation.

    The same projections attend within the vertical stack and, separately, within the
    horizontal stack (mixing the two would break the vertical stack's causality). The joint
    projection's rows are keys, queries, values, in that order.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.kqv = nn.Linear(channels, 3 * channels)
        self.mix = nn.Linear(channels, channels)

    def attend(self, x: Tensor) -> Tensor:
        """``x`` plus causal attention over its raster-ordered positions."""
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        k, q, v = (t.view(b, h * w, self.heads, c // self.heads).transpose(1, 2) for t in self.kqv(tokens).split(c, -1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = self.mix(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)

    def forward(self, vert: Tensor, horiz: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend within each stack (``cond`` is unused: attention layers are unconditioned)."""
        return self.attend(vert), self.attend(horiz)


class Residual(nn.Module):
    """``x + norm(conv(relu(conv(relu(x)))))`` with two ``kernel x kernel`` convolutions (same size)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm(self.conv2(F.relu(self.conv1(F.relu(x)))))


def _gated_stack(
    channels: int, n_layers: int, cond_channels: int | None, attention_every: int, heads: int
) -> nn.ModuleList:
    """Layer A, ``n_layers - 1`` normalised layers B, a :class:`PixelAttention` after every ``attention_every``."""
    if n_layers < 1:
        raise ValueError(f"a gated PixelCNN needs at least one layer, got {n_layers}")
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(GatedPixelConv(channels, "A" if i == 0 else "B", cond_channels, norm=i > 0))
        if attention_every and (i + 1) % attention_every == 0:
            layers.append(PixelAttention(channels, heads))
    return nn.ModuleList(layers)


def _run(layers: nn.ModuleList, x: Tensor, cond: Tensor | None = None) -> Tensor:
    vert, horiz = x, x
    for layer in layers:
        vert, horiz = layer(vert, horiz, cond)
    return torch.cat([vert, horiz], 1)


def _channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory layout (a no-op when it already is).

    The priors keep their feature maps channels-last from the embedding on (the embedding's
    own layout): on the CPU their convolutions run faster so than contiguous, as fast as the
    former priors. The source computes on contiguous tensors; the layout changes rounding only
    (logits within 1e-5 of the source's, ``tests/models/test_source_fixtures.py``).
    """
    return x.contiguous(memory_format=torch.channels_last)


class TopPrior(nn.Module):
    """Gated PixelCNN with causal self-attention over the top code grid.

    Embedding (``n_codes`` -> ``channels``), layer A then ``n_layers - 1`` layers B;
    ``n_attention`` attention layers of ``heads`` heads placed after every
    ``n_layers // n_attention`` gated layers (20 layers, 4 attention layers: A+4B, attn, 5B,
    attn, 5B, attn, 5B, attn). Head: both stacks concatenated, 1x1 to ``channels``,
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
            *[Residual(channels, 1) for _ in range(n_out_res)],
            nn.Conv2d(channels, n_codes, 1),
        )

    def forward(self, codes: Tensor) -> Tensor:
        """Logits ``(B, n_codes, H, W)`` of each code given the codes before it in raster order."""
        x = self.embed(codes).permute(0, 3, 1, 2)  # channels-last view, see _channels_last
        return self.head(_channels_last(_run(self.layers, x)))


class BottomPrior(nn.Module):
    """Gated PixelCNN over the bottom code grid, conditioned on the top codes; no attention.

    The top codes (embedded) pass a conditioning stack of ``n_cond_res`` residual 3x3 blocks
    and a 4x4 stride-2 transposed convolution to the bottom grid's size; the top grid is fully
    known when the bottom one is modelled, so these convolutions look in every direction.
    Every gated layer takes per-position gate biases from it. Head: both stacks concatenated,
    1x1 to ``channels``, 1x1 to logits.
    """

    def __init__(self, n_codes: int, channels: int, n_layers: int, n_cond_res: int) -> None:
        super().__init__()
        self.embed_top = nn.Embedding(n_codes, channels)
        self.embed = nn.Embedding(n_codes, channels)
        self.cond_stack = nn.Sequential(
            *[Residual(channels, 3) for _ in range(n_cond_res)],
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
        )
        self.layers = _gated_stack(channels, n_layers, channels, 0, 1)
        self.head = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.Conv2d(channels, n_codes, 1))

    def condition(self, codes_t: Tensor) -> Tensor:
        """Conditioning features ``(B, channels, 2h, 2w)`` of top codes ``(B, h, w)``."""
        # Contiguous here: the conditioning stack's 3x3 convolutions are faster so (measured).
        return self.cond_stack(self.embed_top(codes_t).permute(0, 3, 1, 2).contiguous())

    def logits(self, codes_b: Tensor, cond: Tensor) -> Tensor:
        """Logits of bottom codes ``(B, H, W)`` given conditioning features ``cond`` cropped to ``H`` rows."""
        x = self.embed(codes_b).permute(0, 3, 1, 2)
        return self.head(_channels_last(_run(self.layers, x, _channels_last(cond))))

    def forward(self, codes_b: Tensor, codes_t: Tensor) -> Tensor:
        """Logits ``(B, n_codes, H, W)`` of each bottom code given earlier bottom codes and all top codes."""
        return self.logits(codes_b, self.condition(codes_t))


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One code per row of ``logits`` ``(N, K)``: multinomial at ``temperature``, argmax at 0.

    Sampling follows the models' one noise rule (``_common.noise``): with a generator it
    runs on the generator's device (the engine passes a CPU generator even when the model
    is on CUDA), and the result returns to the logits' device.
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
