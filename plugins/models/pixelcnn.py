"""The ``pixelcnn`` model plugin: seed 002's VQ-VAE-2 with top and bottom PixelCNN priors.

Three training stages run in order (``models.md`` 3.3):

1. ``vqvae``: the two-level VQ-VAE-2 (the same network and loss as the ``vqvae2`` plugin);
2. ``top_prior``: a gated PixelCNN with causal self-attention over the top codes;
3. ``bottom_prior``: a gated PixelCNN over the bottom codes conditioned on the top codes.

The prior stages freeze the VQ-VAE (the engine keeps it in eval mode without gradients)
and learn by cross-entropy on codes the frozen VQ-VAE produces on the fly; the loss dict
also reports ``bits_per_code``. ``sample`` draws the top grid, then the bottom grid, in
raster order and decodes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench_core.api import API_VERSION, RECONSTRUCT, SAMPLE, BenchError, DataSpec, OptimizerSpec, TrainingStage
from bench_core.hookspecs import hookimpl

from ._common import by_order, eval_mode, source_error, sub_state
from .pixelcnn_layers import LN2, BottomPrior, TopPrior, sample_codes
from .vq2_layers import (
    VQ2_SEED002,
    VQ2_TINY,
    VQVAE2Net,
    input_problem,
    latent_shapes,
    source_layout,
    to_memory_format,
    vq2_from_source,
)
from .vq2_layers import source_spec as vq2_source_spec
from .vq_layers import CodeUsage

_SEED002 = {
    **VQ2_SEED002,
    # models.md 3.3: priors of 128 channels; the top one with 4 attention layers of 2 heads.
    "prior_channels": 128,
    "top_layers": 20,
    "top_attention": 4,
    "attention_heads": 2,
    "top_out_res": 10,
    "bottom_layers": 20,
    "cond_res": 9,
    "prior_lr": 1e-4,
    "prior_batch_size": 64,
    # 100 epochs of the 9 664-slice PNG training split at batch 64, as for the VQ-VAE.
    "prior_steps": 15_100,
}

_TINY = {
    **VQ2_TINY,
    # Small enough that each prior stage of the quickstart takes seconds on one CPU thread.
    "prior_channels": 32,
    "top_layers": 4,
    "top_attention": 1,
    "attention_heads": 2,
    "top_out_res": 1,
    "bottom_layers": 4,
    "cond_res": 1,
    "prior_lr": 3e-3,
    "prior_batch_size": 16,
    "prior_steps": 200,
}


class PixelCNNVQVAE2(nn.Module):
    """VQ-VAE-2 plus PixelCNN priors: reconstructs and samples the one modality of a 2D dataset.

    ``evaluation_metrics`` gives per-level codebook usage, perplexity and dead codes, and
    the priors' negative log-likelihood of the loader's codes in bits per code
    (``top.bits_per_code``, ``bottom.bits_per_code``).
    """

    name = "pixelcnn"
    # 2.0: the priors are seed 002's exactly (norm placement, one shared attention module without
    # a norm, conditioning-stack norms, no extra ReLUs or 1x1s); the VQ-VAE follows vqvae2 2.0.
    version = "2.0"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT, SAMPLE})
    dims = frozenset({2})
    configs = {"seed002-oasis": _SEED002, "tiny": _TINY}
    default_config = "seed002-oasis"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        super().__init__()
        self.config = dict(config)
        self.modality = spec.modalities[0]
        self.top_shape, self.bottom_shape = latent_shapes(spec.shape, config["bottom_down"])
        n_codes, channels = config["n_embeddings"], config["prior_channels"]
        try:
            self.vqvae = VQVAE2Net(spec.channels[0], config)
            self.top_prior = TopPrior(
                n_codes,
                channels,
                config["top_layers"],
                config["top_attention"],
                config["attention_heads"],
                config["top_out_res"],
            )
            self.bottom_prior = BottomPrior(n_codes, channels, config["bottom_layers"], config["cond_res"])
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
        """A data spec the source checkpoints fit: the VQ-VAE's image channels, a shape its grids divide."""
        return vq2_source_spec(cls.name, _source_parts(sources)["VQ-VAE"], config)

    @classmethod
    def from_source(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> dict[str, Tensor]:
        """Our state dict from seed 002's three saved state dicts: the VQ-VAE, the top and the bottom prior.

        The files may come in any order (each is recognised by its keys). Our priors are built
        in the source's module order, so their tensors pair with the source's in order.
        """
        parts = _source_parts(sources)
        with torch.device("meta"):
            model = cls(config, cls.source_spec(sources, config))
        out = {
            f"vqvae.{k}": v
            for k, v in vq2_from_source(cls.name, config["layers"], model.vqvae.state_dict(), parts["VQ-VAE"]).items()
        }
        for attr, part in (("top_prior", "top prior"), ("bottom_prior", "bottom prior")):
            mapped = by_order(cls.name, getattr(model, attr).state_dict(), parts[part], part)
            out.update({f"{attr}.{k}": v for k, v in mapped.items()})
        return out

    def stages(self) -> list[TrainingStage]:
        """``vqvae``, then ``top_prior`` and ``bottom_prior`` with the VQ-VAE frozen."""
        cfg = self.config
        prior_opt = OptimizerSpec("adam", lr=cfg["prior_lr"])
        return [
            TrainingStage(
                name="vqvae",
                parameters=self.vqvae.parameters,
                loss=self.vqvae_loss,
                optimizer=OptimizerSpec("adam", lr=cfg["lr"]),
                default_steps=cfg["steps"],
                batch_size=cfg["batch_size"],
            ),
            TrainingStage(
                name="top_prior",
                parameters=self.top_prior.parameters,
                loss=self.top_prior_loss,
                optimizer=prior_opt,
                frozen=lambda: [self.vqvae],
                default_steps=cfg["prior_steps"],
                batch_size=cfg["prior_batch_size"],
            ),
            TrainingStage(
                name="bottom_prior",
                parameters=self.bottom_prior.parameters,
                loss=self.bottom_prior_loss,
                optimizer=prior_opt,
                frozen=lambda: [self.vqvae],
                default_steps=cfg["prior_steps"],
                batch_size=cfg["prior_batch_size"],
            ),
        ]

    def _input(self, batch: Mapping[str, Any]) -> Tensor:
        return to_memory_format(self.vqvae, batch[self.modality], self.config["channels_last"])

    def vqvae_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Stage ``vqvae``: ``MSE + beta * (commit_top + commit_bottom)`` with logged terms."""
        return self.vqvae.loss(self._input(batch), self.config["beta"])

    def codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Top and bottom code grids of images ``x`` from the VQ-VAE in eval mode, without gradients."""
        # Eval mode even if a caller left the VQ-VAE training: extracting codes must not move the codebooks.
        with eval_mode(self.vqvae), torch.no_grad():
            top, bottom = self.vqvae.encode(x)
        return top.indices, bottom.indices

    def top_prior_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Stage ``top_prior``: cross-entropy of the top codes, and the same in bits per code."""
        codes_t, _ = self.codes(self._input(batch))
        ce = F.cross_entropy(self.top_prior(codes_t), codes_t)
        return {"loss": ce, "bits_per_code": ce.detach() / LN2}

    def bottom_prior_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Stage ``bottom_prior``: cross-entropy of the bottom codes given the top codes, and bits per code."""
        codes_t, codes_b = self.codes(self._input(batch))
        ce = F.cross_entropy(self.bottom_prior(codes_b, codes_t), codes_b)
        return {"loss": ce, "bits_per_code": ce.detach() / LN2}

    def reconstruct(self, x: Tensor, modality: str) -> Tensor:
        """Encode and decode ``x`` of ``modality`` in eval mode, in the input's value range."""
        if modality != self.modality:
            raise BenchError(f"pixelcnn was built for modality {self.modality!r}, not {modality!r}")
        with eval_mode(self), torch.no_grad():
            return self.vqvae(to_memory_format(self.vqvae, x, self.config["channels_last"])).reconstruction

    def sample_codes(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        crop_rows: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` top code grids, then ``n`` bottom grids conditioned on them (raster order).

        ``crop_rows=False`` reruns the priors on the whole grid at every position: the same
        codes for the same generator, only slower (kept to measure and test the cropping).
        """
        device = next(self.parameters()).device
        with eval_mode(self), torch.no_grad():
            codes_t = sample_codes(self.top_prior, n, self.top_shape, temperature, generator, device, crop_rows)
            # The conditioning sees the whole (finished) top grid once; each step crops its rows.
            cond = self.bottom_prior.condition(codes_t)

            def bottom_logits(codes_b: Tensor) -> Tensor:
                return self.bottom_prior.logits(codes_b, cond[:, :, : codes_b.shape[1]])

            codes_b = sample_codes(bottom_logits, n, self.bottom_shape, temperature, generator, device, crop_rows)
        return codes_t, codes_b

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images: prior samples at ``temperature`` (0: argmax) decoded by the VQ-VAE."""
        codes_t, codes_b = self.sample_codes(n, temperature, generator)
        with eval_mode(self), torch.no_grad():
            return self.vqvae.decode_codes(codes_t, codes_b)

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Per-level code usage, perplexity and dead codes, and each prior's NLL in bits per code."""
        n_codes = self.config["n_embeddings"]
        usage = {"top": CodeUsage(n_codes), "bottom": CodeUsage(n_codes)}
        nats = {"top": 0.0, "bottom": 0.0}
        device = next(self.parameters()).device
        with eval_mode(self), torch.no_grad():
            for batch in loader:
                codes_t, codes_b = self.codes(batch[self.modality].to(device))
                usage["top"].update(codes_t)
                usage["bottom"].update(codes_b)
                nats["top"] += float(F.cross_entropy(self.top_prior(codes_t), codes_t, reduction="sum"))
                logits_b = self.bottom_prior(codes_b, codes_t)
                nats["bottom"] += float(F.cross_entropy(logits_b, codes_b, reduction="sum"))
        out: dict[str, float] = {}
        for level, counter in usage.items():
            out.update({f"{level}.{k}": v for k, v in counter.summary().items()})
            total = int(counter.counts.sum())
            out[f"{level}.bits_per_code"] = nats[level] / total / LN2 if total else float("nan")
        return out


def _source_parts(sources: Sequence[Any]) -> dict[str, dict[str, Tensor]]:
    """Seed 002's files by role, recognised by their keys: ``VQ-VAE``, ``top prior``, ``bottom prior``."""
    parts: dict[str, dict[str, Tensor]] = {}
    for index, state in enumerate(sources):
        if not isinstance(state, Mapping):
            raise source_error("pixelcnn", f"file {index + 1} holds a {type(state).__name__}, not a state dict")
        if source_layout(state) is not None:
            role = "VQ-VAE"
        elif "embed_top.weight" in state:
            role = "bottom prior"
        elif "embed.weight" in state:
            role = "top prior"
        else:
            raise source_error(
                "pixelcnn", f"file {index + 1} is none of VQ-VAE, top prior, bottom prior ({list(state)[:3]})"
            )
        if role in parts:
            raise source_error("pixelcnn", f"two files hold the {role}")
        parts[role] = sub_state({"state": state}, "state", "pixelcnn")
    missing = [r for r in ("VQ-VAE", "top prior", "bottom prior") if r not in parts]
    if missing:
        raise source_error(
            "pixelcnn",
            f"seed 002 saves three files (VQ-VAE, top prior, bottom prior); missing: {', '.join(missing)}. "
            "Convert them together: bench convert pixelcnn VQVAE.pth TOP.pth BOTTOM.pth OUT.safetensors",
        )
    return parts


@hookimpl
def bench_models() -> list[type]:
    """Register the ``pixelcnn`` model plugin."""
    return [PixelCNNVQVAE2]
