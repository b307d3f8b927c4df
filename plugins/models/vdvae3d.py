"""The ``vdvae3d`` model plugin: the 3D very deep VAE of seed 001 (``models.md`` section 2).

A bottom-up encoder and a top-down decoder of 3D bottleneck blocks (:mod:`.vdvae3d_layers`),
shaped by five per-resolution lists named as in the source, each with one entry per level
from the full resolution ``R`` down to 1^3 (``log2(R) + 1`` entries):

- ``channels``: block width per level (also the hidden width of its blocks);
- ``latents_per_channel``: number of latent layers per level (the source's name; despite it,
  a count of stochastic layers, ``models.md`` 2.1);
- ``channels_per_latent``: latent channels of each layer at that level, capped at the width;
- ``kernel_sizes_bottom_up`` / ``kernel_sizes_top_down``: convolution kernel per level.

A list may also be given as one integer, used at every level (the ``tiny`` config does this so
that it fits any power-of-two edge: 16^3 in the conformance kit, 16^3 or 32^3 in a quickstart).

Objective (``models.md`` 2.3): the negative ELBO in nats per volume, summed over voxels and
latent elements and averaged over the batch, with a continuous per-voxel Gaussian likelihood
(a density, not discretised), plus the source's explicit regulariser
``l2_reg_coeff * sum_W mean(W**2)`` over weight tensors with more than one dimension (a loss
term, not optimiser weight decay). Bits per dimension are the negative ELBO divided by
``C * R**3 * ln 2``; being a density, the likelihood term can be negative.

Training (``models.md`` 2.4): Adamax 1e-3, no schedule, no EMA; gradients clipped to norm 100
separately for the three sub-networks (encoder, top-down decoder, output head) through the
engine's ``TrainingStage.clip_groups``; updates skipped when the combined norm reaches
``gradient_skipping_value`` (1e12, effectively never) or anything is non-finite (the engine).
The source never skips during its first 50 iterations; the engine always skips non-finite
updates, which only differs for updates that would have written NaNs into the weights.

Memory: the source's 128^3 config peaked at 31.9 GB at batch 1. ``checkpointing: true``
recomputes every block's activations in the backward pass (``torch.utils.checkpoint``,
non-reentrant) instead of storing them; a suite's ``precision: bf16`` runs the model under
bf16 autocast (the engine does this; latent statistics, KLs and the likelihood stay float32).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bench_core.api import (
    API_VERSION,
    RECONSTRUCT,
    SAMPLE,
    BenchError,
    DataSpec,
    OptimizerSpec,
    TrainingStage,
)
from bench_core.hookspecs import hookimpl

from ._common import UnitRange, by_name, eval_mode, only_dict, source_error, sub_state
from .vdvae3d_layers import BottomUp, GaussianHead, TopDown

LIST_KEYS = (
    "channels",
    "latents_per_channel",
    "channels_per_latent",
    "kernel_sizes_bottom_up",
    "kernel_sizes_top_down",
)
"""The per-resolution config keys, in the source's names."""

_COMMON: dict[str, Any] = {
    "lr": 1e-3,
    "l2_reg_coeff": 1e-4,
    "gradient_clipping_value": 100.0,
    "gradient_skipping_value": 1e12,
    "checkpointing": False,
    # Temperature of the posterior latents in reconstruct(): 0 decodes the posterior means, so
    # reconstructions are deterministic (the source's forward pass samples, i.e. 1.0).
    "recon_temperature": 0.0,
    # The source trains for 100 000 epochs (effectively until stopped): the engine needs a number.
    "steps": 100_000,
}

# Seed 001's training augmentations (MONAI + TorchIO, the optional extra medgen-bench[3d]; see
# source001_augment): off by default, on in suites/flair3d.yaml. Only the source configs have the key.
_SOURCE_AUGMENT: dict[str, Any] = {"source_augment": False, "source_augment_p": 0.1}

_CONFIG_32: dict[str, Any] = {
    "channels": [20, 40, 60, 80, 100, 120],
    "latents_per_channel": [2, 5, 4, 3, 2, 1],
    "channels_per_latent": [20, 20, 20, 20, 20, 200],
    "kernel_sizes_bottom_up": [3, 3, 3, 3, 2, 1],
    "kernel_sizes_top_down": [3, 3, 3, 3, 2, 1],
    # Seed-era run_autoencoder batch sizes (32: 2, 64: 10, 128: 1); HEAD's example JSONs use 64 / 8 / 1.
    "batch_size": 2,
    **_COMMON,
    **_SOURCE_AUGMENT,
}

_CONFIG_64: dict[str, Any] = {
    "channels": [20, 40, 60, 80, 100, 120, 140],
    "latents_per_channel": [2, 6, 5, 4, 3, 2, 1],
    "channels_per_latent": [20, 20, 20, 20, 20, 20, 200],
    "kernel_sizes_bottom_up": [3, 3, 3, 3, 3, 2, 1],
    "kernel_sizes_top_down": [3, 3, 3, 3, 3, 2, 1],
    "batch_size": 10,
    **_COMMON,
    **_SOURCE_AUGMENT,
}

_CONFIG_128: dict[str, Any] = {
    "channels": [20, 40, 60, 80, 100, 120, 140, 160],
    "latents_per_channel": [2, 7, 6, 5, 4, 3, 2, 1],
    "channels_per_latent": [20, 20, 20, 20, 20, 20, 20, 200],
    "kernel_sizes_bottom_up": [3, 3, 3, 3, 3, 3, 2, 1],
    "kernel_sizes_top_down": [3, 3, 3, 3, 3, 3, 2, 1],
    "batch_size": 1,
    **_COMMON,
    **_SOURCE_AUGMENT,
}

_TINY: dict[str, Any] = {
    **_COMMON,
    # A CPU-sized model for any power-of-two edge (one integer per list: the same at every level).
    # One CPU thread, batch 4: a step takes about 0.16 s at 16^3 (150 steps in ~25 s) and about
    # 0.75 s at 32^3, where a quickstart should shorten the budget or the batch.
    "channels": 8,
    "latents_per_channel": 1,
    "channels_per_latent": 4,
    "kernel_sizes_bottom_up": 3,
    "kernel_sizes_top_down": 3,
    "batch_size": 4,
    # Short runs: 3e-3 lowered the 16^3 negative ELBO about twice as fast as the source's 1e-3.
    "lr": 3e-3,
    "steps": 150,
}


def _layout_problem(spec: DataSpec) -> str | None:
    """Why ``spec`` is not single-modality cubic 3D data (``None`` when it is)."""
    if spec.dims != 3:
        return f"vdvae3d is 3D; dataset is {spec.dims}D"
    if len(spec.modalities) != 1:
        return f"vdvae3d models single-modality data; dataset is paired ({', '.join(spec.modalities)})"
    if len(set(spec.shape)) != 1:
        return f"vdvae3d needs cubic volumes; dataset is {'x'.join(map(str, spec.shape))}"
    return None


def _per_level(config: Mapping[str, Any], size: int) -> dict[str, list[int]]:
    """The five per-resolution lists of ``config`` for edge ``size``, validated.

    Raises :class:`BenchError` naming the offending list, its length and the expected length.
    """
    levels = int(math.log2(size)) + 1 if size >= 2 and size & (size - 1) == 0 else None
    out: dict[str, list[int]] = {}
    for key in LIST_KEYS:
        value = config[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value] * (levels or 1)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            raise BenchError(f"vdvae3d: config {key!r} must be a list of positive integers (or one), got {value!r}")
        if levels is None:
            raise BenchError(
                f"vdvae3d: config list {key!r} has {len(value)} entries, one per resolution from R down to 1, "
                f"so R must be a power of two (at least 2); the volumes are {size}^3"
            )
        if len(value) != levels:
            raise BenchError(
                f"vdvae3d: config list {key!r} has {len(value)} entries; {size}^3 volumes need "
                f"log2({size}) + 1 = {levels} (resolutions {size} down to 1)"
            )
        out[key] = list(value)
    return out


class VDVAE3D(nn.Module):
    """3D very deep VAE modelling the one modality of a cubic, power-of-two 3D dataset.

    Inputs are mapped from the dataset's value range to ``[-1, 1]`` (the tanh output head's
    range) and outputs back. :meth:`reconstruct` decodes the posterior at
    ``recon_temperature``; :meth:`sample` decodes the priors at the given temperature (0: the
    prior means). Both return the output head's mean, not a noisy draw from the per-voxel
    Gaussian. :meth:`evaluation_metrics` reports the ELBO, bits per dimension and KL per
    resolution.
    """

    name = "vdvae3d"
    version = "1.0"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT, SAMPLE})
    dims = frozenset({3})
    configs = {"32": _CONFIG_32, "64": _CONFIG_64, "128": _CONFIG_128, "tiny": _TINY}
    default_config = "32"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        super().__init__()
        lists = _per_level(config, int(spec.shape[0]))
        self.config = dict(config)
        self.modality = spec.modalities[0]
        self.size = int(spec.shape[0])
        self.in_channels = int(spec.channels[0])
        self.value_range = (float(spec.value_range[0]), float(spec.value_range[1]))
        self._range = UnitRange(self.value_range)
        latents = lists["latents_per_channel"]
        # The source's depth for initial-weight scaling: latent layers + 2 * (levels - 1).
        self.depth = sum(latents) + 2 * (len(latents) - 1)
        self.encoder = BottomUp(self.in_channels, lists["channels"], lists["kernel_sizes_bottom_up"], self.depth)
        self.decoder = TopDown(
            self.size,
            lists["channels"],
            latents,
            lists["channels_per_latent"],
            lists["kernel_sizes_top_down"],
            self.depth,
        )
        self.head = GaussianHead(lists["channels"][0], self.in_channels)
        self.set_checkpointing(bool(config["checkpointing"]))
        self._augmenter: Any = None

    @classmethod
    def source_spec(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> DataSpec:
        """The spec of a source training checkpoint: one channel, its ``resolution`` cubed."""
        return _vdvae3d_source_spec(cls, sources, config)

    @classmethod
    def from_source(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> dict[str, Tensor]:
        """Our state dict from the source's training checkpoint dict (``hyper_params``, three graph state dicts, ...).

        The recorded hyper-parameters must match ``config`` (the error names the list that
        differs); the ``module.`` prefix of the DDP-wrapped graphs is dropped; optimiser state,
        loss histories and file names are not weights.
        """
        return _vdvae3d_from_source(cls, sources, config)

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any] | None = None) -> str | None:
        """Why ``spec`` cannot be served (by ``config``, when given).

        Not 3D, paired, not cubic, an edge that is not a power of two, or per-resolution lists
        of ``config`` whose length does not fit the edge (a config made for another resolution).
        """
        reason = _layout_problem(spec)
        if reason:
            return reason
        size = spec.shape[0]
        if size < 2 or size & (size - 1):
            return f"vdvae3d needs a power-of-two edge of at least 2 (it halves the volume down to 1^3); got {size}"
        levels = int(math.log2(size)) + 1
        for key in LIST_KEYS if config is not None else ():
            value = config[key]
            if isinstance(value, (list, tuple)) and len(value) != levels:
                return (
                    f"vdvae3d config list {key!r} has {len(value)} entries, one per resolution; "
                    f"{size}^3 volumes need {levels} (resolutions {size} down to 1)"
                )
        return None

    def set_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in the backward pass (training only) instead of storing them."""
        self.encoder.checkpointing = enabled
        self.decoder.checkpointing = enabled

    # -- value ranges -------------------------------------------------------------------------

    def _to_unit(self, x: Tensor) -> Tensor:
        return self._range.to_unit(x)

    def _from_unit(self, y: Tensor) -> Tensor:
        return self._range.from_unit(y)

    # -- model --------------------------------------------------------------------------------

    def forward(
        self, x: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode and decode ``x`` (in ``[-1, 1]``) through the posteriors.

        Returns the output head's mean and standard deviation ``(B, C, R, R, R)`` and the
        per-sample KL ``(B,)`` of every latent layer, coarsest first.
        """
        h, kls = self.decoder(self.encoder(x), temperature, generator)
        mean, std = self.head(h)
        return mean, std, kls

    def terms(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample ``nll``, ``kl`` ``(B,)`` (nats), per-layer ``kl_layers`` ``(L, B)`` and the output ``mean``."""
        mean, std, kls = self(x, 1.0, generator)
        layer_kls = torch.stack(kls)
        return {"nll": GaussianHead.nll(mean, std, x), "kl": layer_kls.sum(0), "kl_layers": layer_kls, "mean": mean}

    def l2_penalty(self) -> Tensor:
        """The source's regulariser before its coefficient: sum of ``mean(W**2)`` over weights with ndim > 1."""
        return sum(p.pow(2).mean() for p in self.parameters() if p.dim() > 1)

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Training loss of a collated batch: negative ELBO (nats per volume, batch mean) + L2 term.

        Logged alongside: ``neg_elbo``, ``nll``, ``kl`` (nats per volume), ``bpd`` (bits per
        dimension of the negative ELBO) and ``l2`` (the weighted regulariser).
        """
        x = self._to_unit(batch[self.modality])
        if self.config.get("source_augment"):
            x = self._augment(x)
        t = self.terms(x)
        neg_elbo = (t["nll"] + t["kl"]).mean()
        l2 = self.config["l2_reg_coeff"] * self.l2_penalty()
        return {
            "loss": neg_elbo + l2,
            "neg_elbo": neg_elbo.detach(),
            "nll": t["nll"].mean().detach(),
            "kl": t["kl"].mean().detach(),
            "bpd": neg_elbo.detach() / (x[0].numel() * math.log(2.0)),
            "l2": l2.detach(),
        }

    def _augment(self, x: Tensor) -> Tensor:
        """Seed 001's training augmentation of every volume of ``x`` (in ``[-1, 1]``), built on first use."""
        if self._augmenter is None:
            from .source001_augment import source001_augment

            self._augmenter = source001_augment(self.size, float(self.config["source_augment_p"]))
        return torch.stack([self._augmenter(volume) for volume in x])

    def stages(self) -> list[TrainingStage]:
        """One stage, ``"vdvae"``: Adamax, per-sub-network clipping, skipping at ``gradient_skipping_value``."""
        cfg = self.config
        return [
            TrainingStage(
                name="vdvae",
                parameters=self.parameters,
                loss=self.loss,
                optimizer=OptimizerSpec("adamax", lr=cfg["lr"]),
                grad_clip=cfg["gradient_clipping_value"],
                clip_groups=lambda: [self.encoder.parameters(), self.decoder.parameters(), self.head.parameters()],
                skip_threshold=cfg["gradient_skipping_value"],
                default_steps=cfg["steps"],
                batch_size=cfg["batch_size"],
            )
        ]

    # -- capabilities -------------------------------------------------------------------------

    def reconstruct(self, x: Tensor, modality: str) -> Tensor:
        """Encode and decode ``x`` of ``modality`` at ``recon_temperature``, in the data's value range."""
        if modality != self.modality:
            raise BenchError(f"vdvae3d was built for modality {self.modality!r}, not {modality!r}")
        with eval_mode(self), torch.no_grad():
            mean, _, _ = self(self._to_unit(x), float(self.config["recon_temperature"]))
            return self._from_unit(mean)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` volumes decoded from the priors at ``temperature`` (0: every latent at its prior mean)."""
        with eval_mode(self), torch.no_grad():
            h, _ = self.decoder(None, temperature, generator, n)
            mean, _ = self.head(h)
            return self._from_unit(mean)

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """ELBO terms on ``loader``, latents drawn from the posteriors (temperature 1, fixed seed).

        Keys: ``elbo`` (nats per volume, ``-(nll + kl)``), ``bpd`` (bits per dimension of the
        negative ELBO), ``nll``, ``kl``, ``kl/res{r}`` (KL of the latent layers at edge ``r``,
        nats per volume) and ``mse`` (of the output mean, in ``[-1, 1]`` units).
        """
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(0)
        resolutions = self.decoder.resolutions
        sums: dict[str, float] = {}
        count = 0
        with eval_mode(self), torch.no_grad():
            for batch in loader:
                x = self._to_unit(batch[self.modality].to(device).float())
                t = self.terms(x, generator)
                values = {"nll": t["nll"], "kl": t["kl"], "mse": (t["mean"] - x).pow(2).flatten(1).mean(1)}
                for r in sorted(set(resolutions), reverse=True):
                    rows = [i for i, res in enumerate(resolutions) if res == r]
                    values[f"kl/res{r}"] = t["kl_layers"][rows].sum(0)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + float(value.sum())
                count += x.shape[0]
        if count == 0:
            raise BenchError("vdvae3d.evaluation_metrics: the loader yielded no items")
        out = {k: v / count for k, v in sums.items()}
        out["elbo"] = -(out["nll"] + out["kl"])
        out["bpd"] = -out["elbo"] / (self.in_channels * self.size**3 * math.log(2.0))
        return out


# -- source checkpoints -------------------------------------------------------------------------

_GRAPHS = {
    "encoder": "bottom_up_graph_1_state_dict",
    "decoder": "top_down_generative_graph_state_dict",
    "head": "top_down_x_mu_graph_state_dict",
}
# Hyper-parameters that change the source's architecture, with the only values vdvae3d implements.
_SOURCE_FIXED = {
    "veto_batch_norm": True,
    "bottleneck_resnet_encoder": True,
    "normalise_weight_by_depth": True,
    "zero_biases": True,
    "use_rezero": False,
    "convolutional_downsampling": False,
    "predict_x_scale": True,
    "predict_x_scale_with_sigmoid": True,
    "only_use_one_conv_block_at_top": False,
    "separate_hidden_loc_scale_convs": False,
    "separate_output_loc_scale_convs": False,
    "use_precision_reweighting": False,
    "output_activation_function": "tanh",
    "scale_hidden_clamp_bounds": [0.001, 1],
    "scale_output_clamp_bounds": [0.01, 1],
}
# Our list keys and the source's names (channels_top_down / _hidden must equal channels).
_SOURCE_LISTS = {
    "channels": "channels",
    "latents_per_channel": "latent_feature_maps_per_resolution",
    "channels_per_latent": "channels_per_latent",
    "kernel_sizes_bottom_up": "kernel_sizes_bottom_up",
    "kernel_sizes_top_down": "kernel_sizes_top_down",
}
_CONV_BLOCK = {"body.0.1": "convolutions.0", "body.0.3.conv": "convolutions.1", "body.0.5.conv": "convolutions.2"}
_CONV_BLOCK |= {"body.1": "convolutions.3", "skip": "skip_con"}
_LATENT = {"prior.1": "convs_p.0", "prior.3.conv": "convs_p.1", "prior.5.conv": "convs_p.2"}
_LATENT |= {"p_mu": "convs_p.3", "p_raw": "convs_p.4", "prior_skip": "convs_p_skip_conv_after_prior"}
_LATENT |= {"posterior.1": "convs_q.0", "posterior.3.conv": "convs_q.1", "posterior.5.conv": "convs_q.2"}
_LATENT |= {"q_mu": "convs_q.3", "q_raw": "convs_q.4", "conv_z": "conv_z", "skip": "skip_con_conv"}


def _source_key(key: str) -> str:
    """The source's name for our key, with the graph as a prefix (``encoder.levels.0.1.body.1.weight`` ->
    ``bottom_up_graph_1_state_dict/0.1.convolutions.3.weight``)."""
    part, rest = key.split(".", 1)
    leaf = rest.rsplit(".", 1)[1]
    if part == "head":
        return f"{_GRAPHS['head']}/0.convolutions.0.{leaf}"
    found = re.match(r"levels\.(\d+)\.(\d+)\.(?:(\d)\.)?(.+)\.\w+$", rest)
    if found is None:
        return key
    level, index, role, inner = int(found.group(1)), int(found.group(2)), found.group(3), found.group(4)
    if part == "encoder":  # levels.<level>.<block>.<inner>
        return f"{_GRAPHS['encoder']}/{level}.{index}.{_CONV_BLOCK.get(inner, inner)}.{leaf}"
    # decoder: levels.<level>.<pair>.<0 latent | 1 conv block>.<inner>; the source's levels after the
    # first start with an (parameter-free) upsampling module, then latent, conv, latent, conv, ...
    position = (0 if level == 0 else 1) + 2 * index + int(role)
    names = _LATENT if role == "0" else _CONV_BLOCK
    return f"{_GRAPHS['decoder']}/{level}.{position}.{names.get(inner, inner)}.{leaf}"


def _source_hyper(sources: Sequence[Any], model: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    state = only_dict(list(sources), model, "the training checkpoint dict")
    hyper = state.get("hyper_params")
    if not isinstance(hyper, Mapping):
        raise source_error(model, "no 'hyper_params' dict (not a 3d_very_deep_vae training checkpoint)")
    return state, dict(hyper)


def _check_source_config(hyper: Mapping[str, Any], config: Mapping[str, Any], model: str) -> None:
    for key, value in _SOURCE_FIXED.items():
        if key in hyper and hyper[key] != value:
            raise source_error(model, f"the source model has {key}={hyper[key]!r}; vdvae3d implements {value!r} only")
    sharing = hyper.get("latent_feature_maps_per_resolution_weight_sharing") or []
    if (sharing != "none") if isinstance(sharing, str) else any(sharing):
        raise source_error(model, "the source model shares weights within a resolution; vdvae3d does not")
    size = int(hyper["resolution"])
    ours = _per_level(config, size)
    for key, name in _SOURCE_LISTS.items():
        if list(hyper[name]) != ours[key]:
            raise source_error(model, f"the source model has {name}={list(hyper[name])}, the config {key}={ours[key]}")
    for name in ("channels_top_down", "channels_hidden", "channels_hidden_top_down"):
        if name in hyper and list(hyper[name]) != list(hyper["channels"]):
            raise source_error(model, f"the source model's {name} differs from its channels; vdvae3d needs them equal")


def _vdvae3d_source_spec(cls: type, sources: Sequence[Any], config: Mapping[str, Any]) -> DataSpec:
    """The spec of a source training checkpoint: one channel (colour data is refused), its resolution."""
    _, hyper = _source_hyper(sources, cls.name)
    if hyper.get("data_is_colour"):
        raise source_error(cls.name, "the source model was trained on colour data; vdvae3d's head is single-channel")
    size = int(hyper["resolution"])
    return DataSpec(("image",), (1,), 3, (size, size, size), (-1.0, 1.0))


def _vdvae3d_from_source(cls: type, sources: Sequence[Any], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Our state dict from the source's training checkpoint (three graphs saved from DDP wrappers)."""
    state, hyper = _source_hyper(sources, cls.name)
    _check_source_config(hyper, config, cls.name)
    if "top_down_x_var_graph_state_dict" in state:
        raise source_error(cls.name, "the source model has a separate output-scale graph; vdvae3d does not")
    weights = {}
    for graph in _GRAPHS.values():
        weights.update({f"{graph}/{k}": v for k, v in sub_state(state, graph, cls.name, strip="module.").items()})
    with torch.device("meta"):
        target = cls(config, _vdvae3d_source_spec(cls, sources, config)).state_dict()
    return by_name(cls.name, target, weights, _source_key)


@hookimpl
def bench_models() -> list[type]:
    """Register the ``vdvae3d`` model plugin."""
    return [VDVAE3D]
