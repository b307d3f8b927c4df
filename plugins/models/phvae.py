"""The ``phvae`` model plugin: paired hierarchical VAEs for image translation (seed 000).

Two VDVAE-style hierarchical VAEs, one per modality (``models.md`` section 1), built from
:mod:`.hvae_layers`. Each has a bottom-up encoder, a top-down decoder and an output head.
Reconstruction (A2A, B2B) decodes a modality from its own encoder's activations with the
ordinary posteriors; translation (A2B, B2A) runs the *target* modality's decoder in
translational mode on the *source* modality's encoder activations: in every latent group the
first half of the latents ("style") follows the target decoder's prior and the second half
("content") comes from the translational posterior, which sees the source encoder.

Training objective (per sample, averaged over the batch; weights default to 1):

    rec(A2A) + rec(B2B) + w_kl * (KL_A + KL_B)
    + w_tr * [rec(B2A) + rec(A2B) + w_tkl * (KL_B2A + KL_A2B)]

with ``rec`` the DMOL negative log-likelihood in nats per dimension ("nll" configs, 6-bit
bins) or the mean absolute error in ``[0, 1]`` units ("mae" configs), and every KL summed
over all latents and divided by the target's ``C*H*W``. The translation KLs only cover the
content half (the style half equals the prior, so its KL is exactly zero).
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
    TRANSLATE,
    BenchError,
    DataSpec,
    OptimizerSpec,
    TrainingStage,
)
from bench_core.hookspecs import hookimpl

from ._common import UnitRange, by_name, only_dict, source_error, sub_state
from .hvae_layers import HVAE, DmolHead

COLLAPSE_NATS = 0.01
"""A latent group whose mean KL per latent dimension is below this (nats) counts as collapsed."""

_NDVI_RGB_NLL: dict[str, Any] = {
    # Architecture of the four source argfiles (models.md 1.2): 9 resolutions (256 ... 1) x 5 blocks.
    "width": 72,
    "n_resolutions": 9,
    "blocks_per_resolution": 5,
    "zdim": 6,
    "bottleneck": 0.8,
    "head": "dmol",  # "dmol" (the "nll" argfiles) or "mae"
    "dmol_mixtures": 1,
    "dmol_bits": 6,
    # Loss weights (argfile loss_kl_fac, loss_tra_fac, loss_tkl_fac).
    "kl_weight": 1.0,
    "translation_weight": 1.0,
    "translation_kl_weight": 1.0,
    # Optimisation: Adamax 1e-3, global-norm clipping at 300 after unscaling. The source's
    # grad_skip (5000) is never used by its loop, hence no skipping by default.
    "lr": 1e-3,
    "grad_clip": 300.0,
    "skip_threshold": None,
    "ema_decay": None,
    # The source steps every 5 samples of batch 1 (loss / 5): the engine accumulates 5 passes.
    "batch_size": 1,
    "accumulate": 5,
    "epochs": 100,
    "steps": None,  # main-stage default steps; None: epochs x steps per epoch of the train split
    "train_size": None,  # training items per epoch; None: the dataset's reported train split size
    "warmup_epochs": 0,
    "warmup_batch_size": 1,
    # Temperature of the latents (and of the DMOL noise) in reconstruct/translate when the suite's
    # evaluation variant gives none; the paper's headline numbers use 0.0 (deterministic). The
    # source's joint augmentation of A and B is the engine's: suites set it per dataset.
    "eval_temperature": 0.0,
    # Activation checkpointing in training: "none" (the source's memory use), "block" or
    # "resolution" (recompute each block's / each resolution's activations in the backward pass;
    # same values and gradients, less memory, longer steps). See hvae_layers.
    "checkpointing": "none",
    # Model and inputs in channels-last memory format: faster training steps on the CPU, results
    # within rounding (docs/performance.md). Off in the source configs, so they stay the source's;
    # on in tiny.
    "channels_last": False,
}

_NDVI_RGB_MAE = {**_NDVI_RGB_NLL, "head": "mae"}

_MRI_CT_NLL = dict(_NDVI_RGB_NLL)

_MRI_CT_MAE = {
    **_MRI_CT_NLL,
    "head": "mae",
    # "otherwise it behaves poorly" (seed README): one epoch of reconstruction-only training.
    "warmup_epochs": 1,
}

_TINY = {
    **_NDVI_RGB_NLL,
    # A CPU-sized pair for 32x32 (or 64x64) inputs: 32 -> 16 -> 8, one block per resolution.
    # On one busy CPU thread a 32x32 step of batch 4 takes about 0.15-0.2 s: 200 steps ~ 35 s.
    "width": 16,
    "n_resolutions": 3,
    "blocks_per_resolution": 1,
    "zdim": 4,
    "lr": 2e-3,
    "batch_size": 4,
    "accumulate": 1,
    "steps": 200,
    "channels_last": True,
}


def _steps_per_epoch(n_items: int, per_update: int) -> int:
    """Updates the engine's loop makes per epoch (it drops the last partial update when it can)."""
    return n_items // per_update if n_items > per_update else 1


class PHVAE(nn.Module):
    """Paired hierarchical VAEs translating between the two modalities of a paired 2D dataset.

    Channels per modality come from ``spec.channels``; the resolution is ``spec.shape`` (square,
    a power of two, at least ``2**(n_resolutions - 1)``). :meth:`reconstruct` and
    :meth:`translate` take a ``temperature`` (default: config ``eval_temperature``), so the
    engine evaluates t = 0 and t = 1 from one trained model; :meth:`sample` takes its own.

    Training: a ``"main"`` stage (Adamax, clipping at ``grad_clip``, optional update skipping
    at ``skip_threshold`` with the engine's cap on consecutive skips), ``accumulate`` passes of
    ``batch_size`` items per update (5 x 1 as the source). With ``warmup_epochs > 0`` (the
    ``mri-ct-mae`` config) a ``"warmup"`` stage comes first: batch 1, no clipping, no
    augmentation, reconstruction terms only (A2A, B2B and their KLs), on inputs and targets
    moved to the upper half of the value range, as the source's warm-up (which maps ``[0, 1]``
    images to ``[0.5, 1]``); the main stage continues its Adamax state, as the source's single
    optimiser does. The source's warm-up reads the training set unshuffled; the engine's
    sampler shuffles it.

    Memory: a paper-config training step (256x256, batch 1, fp32) peaks at 18.8 GB, nearly all
    of it activations kept for the backward pass. ``checkpointing: block`` keeps only each
    block's input and recomputes the block in the backward pass (5.0 GB; same losses and
    gradients bit for bit); ``resolution`` recomputes a resolution's blocks together (fewer
    tensors kept, but a whole 256x256 group is rebuilt at once: 6.8 GB at the paper config).
    The source configs keep ``none``.

    Speed: ``channels_last`` keeps the model and its inputs in channels-last memory format.
    At the tiny config it made CPU training steps 1.07-1.14x faster, with outputs within 1.2e-7
    and the same losses (docs/performance.md); on in ``tiny``, off in the source configs.
    """

    name = "phvae"
    version = "1.1"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT, TRANSLATE, SAMPLE})
    dims = frozenset({2})
    configs = {
        "ndvi-rgb-nll": _NDVI_RGB_NLL,
        "ndvi-rgb-mae": _NDVI_RGB_MAE,
        "mri-ct-nll": _MRI_CT_NLL,
        "mri-ct-mae": _MRI_CT_MAE,
        "tiny": _TINY,
    }
    default_config = "ndvi-rgb-nll"

    def __init__(self, config: Mapping[str, Any], spec: DataSpec) -> None:
        super().__init__()
        if config["head"] not in ("dmol", "mae"):
            raise BenchError(f"unknown head {config['head']!r}; valid: dmol, mae")
        self.config = dict(config)
        self.modalities = tuple(spec.modalities)
        self.size = spec.shape[0]
        self.value_range = (float(spec.value_range[0]), float(spec.value_range[1]))
        self._range = UnitRange(self.value_range)
        self.train_size = config["train_size"] or spec.split_sizes.get("train")
        self.temperature = float(config["eval_temperature"])
        try:
            self.branches = nn.ModuleList(
                HVAE(
                    channels, self.size, config["width"], config["n_resolutions"], config["blocks_per_resolution"],
                    config["zdim"], config["bottleneck"], translational=True, head=config["head"],
                    mixtures=config["dmol_mixtures"], bits=config["dmol_bits"],
                )
                for channels in spec.channels
            )  # fmt: skip
            for branch in self.branches:
                branch.set_checkpointing(config["checkpointing"])
        except ValueError as exc:
            raise BenchError(f"phvae: {exc}") from exc
        self._memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
        self.to(memory_format=self._memory_format)  # in place: the parameter objects stay the same

    @classmethod
    def incompatibility(cls, spec: DataSpec, config: Mapping[str, Any] | None = None) -> str | None:
        """Why ``spec`` cannot be served (by ``config``, when given).

        3D or single-modality data, modalities with different value ranges (one mapping serves
        both), a non-square or non-power-of-two size, or one the config's resolutions cannot halve.
        """
        if spec.dims not in cls.dims:
            return f"phvae is 2D; dataset is {spec.dims}D"
        if not spec.paired:
            return f"phvae translates between two paired modalities; dataset has {len(spec.modalities)}"
        if spec.value_range is None:
            ranges = ", ".join(f"{m} {spec.range_of(m)}" for m in spec.modalities)
            return f"phvae maps both modalities with one value range; dataset has {ranges}"
        h, w = spec.shape
        if h != w:
            return f"phvae needs square images; dataset is {h}x{w}"
        if h & (h - 1):
            return f"phvae needs a power-of-two image size (it halves the resolution down the hierarchy); got {h}"
        if config is not None and h < 2 ** (config["n_resolutions"] - 1):
            n = config["n_resolutions"]
            return f"phvae with n_resolutions {n} halves the images {n - 1} times; {h}x{h} is too small"
        return None

    # -- value ranges -------------------------------------------------------------------------

    def _to_unit(self, x: Tensor) -> Tensor:
        """Dataset range -> ``[-1, 1]`` (the space of the encoders and the DMOL bins), in the model's memory format."""
        return self._range.to_unit(x).contiguous(memory_format=self._memory_format)

    def _from_unit(self, y: Tensor) -> Tensor:
        return self._range.from_unit(y).contiguous()

    def _index(self, modality: str) -> int:
        if modality not in self.modalities:
            raise BenchError(f"phvae was built for modalities {self.modalities}, not {modality!r}")
        return self.modalities.index(modality)

    # -- training -----------------------------------------------------------------------------

    def terms(self, xs: list[Tensor], translate: bool = True) -> dict[str, Tensor]:
        """Per-sample loss terms ``(N,)`` for images ``xs`` (one per modality, in ``[-1, 1]``).

        Keys: ``rec_A``, ``kl_A`` (and B) for reconstructions; with ``translate`` also
        ``rec_B2A``, ``kl_B2A``, ``rec_A2B``, ``kl_A2B``.
        """
        acts = [branch.encoder(x) for branch, x in zip(self.branches, xs, strict=True)]
        out: dict[str, Tensor] = {}
        routes = [(i, i) for i in range(2)] + ([(1, 0), (0, 1)] if translate else [])
        for source, target in routes:
            branch, x = self.branches[target], xs[target]
            params, kls = branch.decoder(acts[source], translate=source != target)
            src, dst = self.modalities[source], self.modalities[target]
            name = dst if source == target else f"{src}2{dst}"
            out[f"rec_{name}"] = branch.recon_term(params, x)
            out[f"kl_{name}"] = sum(kl.sum(dim=(1, 2, 3)) for kl in kls) / x[0].numel()
        return out

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Main-stage loss of a collated batch: reconstructions, translations and their KLs."""
        xs = [self._to_unit(batch[m]) for m in self.modalities]
        t = self.terms(xs, translate=True)
        a, b = self.modalities
        cfg = self.config
        recon = t[f"rec_{a}"] + t[f"rec_{b}"] + cfg["kl_weight"] * (t[f"kl_{a}"] + t[f"kl_{b}"])
        trans_kl = t[f"kl_{b}2{a}"] + t[f"kl_{a}2{b}"]
        trans = t[f"rec_{b}2{a}"] + t[f"rec_{a}2{b}"] + cfg["translation_kl_weight"] * trans_kl
        total = (recon + cfg["translation_weight"] * trans).mean()
        return {"loss": total, **{k: v.detach().mean() for k, v in t.items()}}

    def warmup_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Warm-up loss: reconstruction terms only, on images moved to the upper half of the range.

        The source maps its ``[0, 1]`` images to ``[0.5, 1]`` (no augmentation); in the
        encoders' ``[-1, 1]`` space that is ``x -> (x + 1) / 2``.
        """
        xs = [(self._to_unit(batch[m]) + 1.0) / 2.0 for m in self.modalities]
        t = self.terms(xs, translate=False)
        a, b = self.modalities
        total = t[f"rec_{a}"] + t[f"rec_{b}"] + self.config["kl_weight"] * (t[f"kl_{a}"] + t[f"kl_{b}"])
        return {"loss": total.mean(), **{k: v.detach().mean() for k, v in t.items()}}

    def _default_steps(self, epochs: int, batch: int) -> int:
        if not self.train_size:
            raise BenchError(
                "phvae: the dataset reports no train split size, so epochs cannot be turned into steps; "
                "set the model config's train_size (or steps)"
            )
        return epochs * _steps_per_epoch(self.train_size, batch)

    def stages(self) -> list[TrainingStage]:
        """``"warmup"`` (when ``warmup_epochs > 0``) then ``"main"``, both with Adamax."""
        cfg = self.config
        stages = []
        if cfg["warmup_epochs"] > 0:
            stages.append(
                TrainingStage(
                    name="warmup",
                    parameters=self.parameters,
                    loss=self.warmup_loss,
                    optimizer=OptimizerSpec("adamax", lr=cfg["lr"]),
                    default_steps=self._default_steps(cfg["warmup_epochs"], cfg["warmup_batch_size"]),
                    batch_size=cfg["warmup_batch_size"],
                    augment=False,
                )
            )
        stages.append(
            TrainingStage(
                name="main",
                parameters=self.parameters,
                loss=self.loss,
                optimizer=OptimizerSpec("adamax", lr=cfg["lr"]),
                grad_clip=cfg["grad_clip"],
                skip_threshold=cfg["skip_threshold"],
                ema_decay=cfg["ema_decay"],
                default_steps=cfg["steps"] or self._default_steps(cfg["epochs"], cfg["batch_size"] * cfg["accumulate"]),
                batch_size=cfg["batch_size"],
                accumulate=cfg["accumulate"],
                continue_optimizer=bool(stages),
            )
        )
        return stages

    # -- capabilities -------------------------------------------------------------------------

    def reconstruct(self, x: Tensor, modality: str, temperature: float | None = None) -> Tensor:
        """Encode and decode ``x`` of ``modality`` at ``temperature`` (default ``self.temperature``)."""
        return self.translate(x, modality, modality, temperature)

    def translate(self, x: Tensor, source: str, target: str, temperature: float | None = None) -> Tensor:
        """Map ``x`` of ``source`` to ``target`` at ``temperature`` (default ``self.temperature``).

        ``source == target`` reconstructs. Output in the data's value range.
        """
        i, j = self._index(source), self._index(target)
        t = self.temperature if temperature is None else float(temperature)
        with torch.no_grad():
            acts = self.branches[i].encoder(self._to_unit(x))
            decoder = self.branches[j].decoder
            params, _ = decoder(acts, translate=i != j, temperature=t)
            return self._from_unit(decoder.head.sample(params, t))

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images of the first modality drawn from its decoder's prior at ``temperature``."""
        with torch.no_grad():
            decoder = self.branches[0].decoder
            params = decoder.sample(n, temperature, generator)
            return self._from_unit(decoder.head.sample(params, temperature, generator))

    def evaluation_metrics(self, loader: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Per-modality KLs, ELBO and posterior-collapse counts of the reconstruction paths on ``loader``.

        Latents are drawn from the posteriors at temperature 1 with a fixed seed. Keys, for
        each modality ``m``:

        - ``kl/m/groupNN``: KL of latent group ``NN`` (coarsest first), nats per image;
        - ``kl/m``: their sum; ``elbo/m``: ``-(NLL + KL)`` in nats per image and ``bpd/m``:
          ``-elbo / (C*H*W*ln 2)`` (DMOL heads only: the likelihood is over 2**dmol_bits bins);
          ``mae/m`` for MAE heads, which define no likelihood;
        - ``collapsed_groups/m``: groups whose mean KL per latent dimension is below
          :data:`COLLAPSE_NATS`; ``posterior_collapse``: 1.0 when any group collapsed.
        """
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(0)
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad():
            for batch in loader:
                for m, branch in zip(self.modalities, self.branches, strict=True):
                    x = self._to_unit(batch[m].to(device).float())
                    params, kls = branch.decoder(branch.encoder(x), generator=generator)
                    per_group = [kl.sum(dim=(1, 2, 3)) for kl in kls]
                    rec = branch.recon_term(params, x) * (x[0].numel() if self._dmol else 1.0)
                    values = {f"{'nll' if self._dmol else 'mae'}/{m}": rec, f"kl/{m}": sum(per_group)}
                    values.update({f"kl/{m}/group{g:02d}": kl for g, kl in enumerate(per_group)})
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + float(value.sum())
                count += int(batch[self.modalities[0]].shape[0])
        if count == 0:
            raise BenchError("phvae.evaluation_metrics: the loader yielded no items")
        out = {k: v / count for k, v in sums.items()}
        collapsed_total = 0
        for m, branch in zip(self.modalities, self.branches, strict=True):
            groups = branch.decoder.groups
            collapsed = sum(
                out[f"kl/{m}/group{g:02d}"] / (group.zdim * group.size**2) < COLLAPSE_NATS
                for g, group in enumerate(groups)
            )
            out[f"collapsed_groups/{m}"] = float(collapsed)
            collapsed_total += collapsed
            if self._dmol:
                dims = branch.channels * self.size**2
                out[f"elbo/{m}"] = -(out[f"nll/{m}"] + out[f"kl/{m}"])
                out[f"bpd/{m}"] = -out[f"elbo/{m}"] / (dims * math.log(2.0))
        out["posterior_collapse"] = float(collapsed_total > 0)
        return out

    # -- source checkpoints ---------------------------------------------------------------------

    @classmethod
    def source_spec(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> DataSpec:
        """The spec of the source's ``save_model`` dict: image size and the two branches' channels."""
        v1, v2 = _source_kwargs(only_dict(list(sources), cls.name, "the save_model dict"))
        if v1["res"] != v2["res"]:
            raise source_error(cls.name, f"the branches differ in image size ({v1['res']} and {v2['res']})")
        return DataSpec(("A", "B"), (v1["cin"], v2["cin"]), 2, (v1["res"], v1["res"]), (0.0, 1.0))

    @classmethod
    def from_source(cls, sources: Sequence[Any], config: Mapping[str, Any]) -> dict[str, Tensor]:
        """Our state dict from the source's ``save_model`` dict (``model``, ``architecture``, ...).

        Branch ``v1`` (the source's x1) is our first modality, ``v2`` the second. The
        architecture recorded in the file must match ``config`` (the error says which key to
        set). The DMOL output convolution's channels are reordered from the source's
        per-image-channel interleave ``[logits | (means, scales, coeffs) per channel]`` to ours
        ``[logits | means | scales | coeffs]``. Optimiser state and training records are not weights.
        """
        state = only_dict(list(sources), cls.name, "the save_model dict")
        for kwargs in _source_kwargs(state):
            _check_source_config(kwargs, config)
        weights = sub_state(state, "model", cls.name)
        with torch.device("meta"):
            target = cls(config, cls.source_spec(sources, config)).state_dict()

        def transform(key: str, value: Tensor) -> Tensor:
            if config["head"] != "dmol" or ".decoder.head.conv." not in key:
                return value
            channels = int(_source_kwargs(state)[int(key.split(".")[1])]["cin"])
            return value[_dmol_order(channels, config["dmol_mixtures"], cls.name)]

        return by_name(cls.name, target, weights, lambda key: _source_key(key, config["head"]), transform)

    @property
    def _dmol(self) -> bool:
        return isinstance(self.branches[0].decoder.head, DmolHead)


_KEY_RULES = [
    (r"^branches\.(\d)\.", lambda m: f"v{int(m.group(1)) + 1}."),
    (r"encoder\.stem\.", lambda m: "encoder.preprocess."),
    (r"encoder\.blocks\.", lambda m: "encoder.enc_blocks."),
    (r"\.down\.0\.", lambda m: ".pool.conv."),
    (r"decoder\.start$", lambda m: "decoder.dec_bias"),
    (r"decoder\.layers\.", lambda m: "decoder.dec_blocks."),
    (r"\.posterior\.", lambda m: ".enc."),
    (r"\.translational\.", lambda m: ".encT."),
    (r"\.convs\.(\d)\.", lambda m: f".c{int(m.group(1)) + 1}."),
    (r"\.acts\.(\d)\.", lambda m: f".a{int(m.group(1)) + 1}."),
]


def _source_key(key: str, head: str) -> str:
    """The source's name for our key ``key`` (``branches.0.encoder.blocks.1.convs.0.weight`` ->
    ``v1.encoder.enc_blocks.1.c1.weight``); the output convolution is ``out_net.out_conv`` (DMOL)
    or ``out_net`` itself (MAE)."""
    for pattern, repl in _KEY_RULES:
        key = re.sub(pattern, repl, key)
    return key.replace(".decoder.head.conv.", ".decoder.out_net.out_conv." if head == "dmol" else ".decoder.out_net.")


def _source_kwargs(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two branches' constructor arguments recorded in a source ``save_model`` dict."""
    try:
        kwargs = state["architecture"]["kwargs"]
        return dict(kwargs["v1kwargs"]), dict(kwargs["v2kwargs"])
    except (KeyError, TypeError):
        what = "no architecture.kwargs.v1kwargs / v2kwargs (not a paired-hvaes save_model dict)"
        raise source_error("phvae", what) from None


def _check_source_config(kwargs: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Raise naming the config key to set when the source's recorded architecture differs from ``config``."""
    checks = {
        "width": (set(kwargs["ec_pg"]) | set(kwargs["dc_pg"]), {config["width"]}),
        "n_resolutions": ({len(kwargs["ec_pg"])}, {config["n_resolutions"]}),
        "blocks_per_resolution": (set(kwargs["e_pg"]) | set(kwargs["d_pg"]), {config["blocks_per_resolution"]}),
        "zdim": (set(kwargs["lv_pg"]), {config["zdim"]}),
        "bottleneck": ({float(kwargs["bottleneck"])}, {float(config["bottleneck"])}),
        "head": ({"dmol" if kwargs["dmol_out"] else "mae"}, {config["head"]}),
    }
    if kwargs["dmol_out"]:
        checks["dmol_mixtures"] = ({kwargs["n_mix"]}, {config["dmol_mixtures"]})
        checks["dmol_bits"] = ({kwargs["bits"]}, {config["dmol_bits"]})
    for key, (source, ours) in checks.items():
        if source != ours:
            value = next(iter(source)) if len(source) == 1 else sorted(source)
            what = f"the source model has {key} {value}, the config {config[key]}: set {key}={value}"
            raise source_error("phvae", what)
    if not kwargs.get("translational", True):
        raise source_error("phvae", "the source model has no translational posteriors; phvae needs them")


def _dmol_order(channels: int, mixtures: int, model: str) -> Tensor:
    """For each of our DMOL output channels, the index of the source's channel holding it."""
    n_coeffs = channels * (channels - 1) // 2
    if (n_coeffs * mixtures) % channels:
        raise source_error(model, f"the source's DMOL layout cannot hold {mixtures} mixtures for {channels} channels")
    per_channel = n_coeffs * mixtures // channels
    stride = 2 * mixtures + per_channel  # the source's block per image channel: means, scales, coefficients
    order = list(range(mixtures))  # mixture logits come first in both
    order += [mixtures + c * stride + m for c in range(channels) for m in range(mixtures)]  # means
    order += [mixtures + c * stride + mixtures + m for c in range(channels) for m in range(mixtures)]  # scales
    for k in range(n_coeffs):  # coefficients: the source's flat (channel, slot) list read as (coeff, mixture)
        for m in range(mixtures):
            c, slot = divmod(k * mixtures + m, per_channel)
            order.append(mixtures + c * stride + 2 * mixtures + slot)
    return torch.tensor(order)


@hookimpl
def bench_models() -> list[type]:
    """Register the ``phvae`` model plugin."""
    return [PHVAE]
