"""Tests of the ``vdvae3d`` model plugin and its building blocks in ``vdvae3d_layers``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench_core.api import API_VERSION, RECONSTRUCT, SAMPLE, BenchError, DataSpec, ModelPlugin, merge_config
from bench_core.testing import check_model_plugin
from bench_core.trainer import TrainSettings, run_stage
from bench_plugins.models.vdvae3d import LIST_KEYS, VDVAE3D, bench_models
from bench_plugins.models.vdvae3d_layers import (
    ConvBlock,
    GaussianHead,
    LatentBlock,
    PaddedConv3d,
    TopLatentBlock,
    gaussian_kl,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small 3D convolutions gain nothing from extra intra-op threads on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(shape: tuple[int, ...] = (8, 8, 8), modalities: tuple[str, ...] = ("image",), dims: int = 3) -> DataSpec:
    return DataSpec(modalities, (1,) * len(modalities), dims, shape, (-1.0, 1.0))


def _model(size: int = 8, seed: int = 0, config: str = "tiny", **overrides) -> VDVAE3D:
    torch.manual_seed(seed)
    return VDVAE3D(merge_config(VDVAE3D.configs[config], overrides), _spec((size,) * 3))


def _volumes(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random volumes in [-1, 1]: trilinear upsampling of a coarse random grid."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 3, 3, 3, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)
    return 2.0 * x - 1.0


class _Volumes(torch.utils.data.Dataset):
    """A map-style dataset of ``{"image", "id"}`` items, as a dataset plugin's split yields."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"image": self.x[i], "id": f"vol{i:03d}"}


def test_plugin_contract() -> None:
    assert bench_models() == [VDVAE3D]
    assert VDVAE3D.api_version == API_VERSION
    assert VDVAE3D.capabilities == {RECONSTRUCT, SAMPLE} and VDVAE3D.dims == {3}
    model = _model()
    assert isinstance(model, ModelPlugin)
    (stage,) = model.stages()
    assert (stage.optimizer.name, stage.optimizer.weight_decay) == ("adamax", 0.0)  # L2 is a loss term
    assert (stage.grad_clip, stage.skip_threshold, stage.ema_decay) == (100.0, 1e12, None)
    # Encoder, top-down decoder and output head are clipped separately and together cover every parameter.
    groups = [list(g) for g in stage.clip_groups()]
    assert len(groups) == 3
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    for name in ("32", "64", "128"):
        cfg = VDVAE3D.configs[name]
        assert (cfg["lr"], cfg["l2_reg_coeff"], cfg["gradient_clipping_value"]) == (1e-3, 1e-4, 100.0)


def test_conformance_kit() -> None:
    # The kit picks its 16^3 volume spec; the tiny config's one-integer lists fit any edge.
    check_model_plugin(VDVAE3D, config="tiny")


@pytest.mark.parametrize("key", LIST_KEYS)
def test_wrong_list_length_names_the_list(key: str) -> None:
    cfg = dict(VDVAE3D.configs["32"])
    cfg[key] = cfg[key][:-1]
    message = rf"config list '{key}' has 5 entries; 32\^3 volumes need log2\(32\) \+ 1 = 6"
    with pytest.raises(BenchError, match=message):
        VDVAE3D(cfg, _spec((32, 32, 32)))
    # A source config on data of another size fails the same way, naming the first list.
    with pytest.raises(BenchError, match=r"'channels' has 6 entries; 64\^3 volumes need log2\(64\) \+ 1 = 7"):
        VDVAE3D(VDVAE3D.configs["32"], _spec((64, 64, 64)))


def test_non_power_of_two_edge_names_the_list() -> None:
    with pytest.raises(BenchError, match=r"config list 'channels' has 6 entries.*power of two.*24\^3"):
        VDVAE3D(VDVAE3D.configs["32"], _spec((24, 24, 24)))
    with pytest.raises(BenchError, match="'latents_per_channel' must be a list of positive integers"):
        _model(latents_per_channel=[1, 0, 1, 1])
    with pytest.raises(BenchError, match="'kernel_sizes_top_down' must be a list of positive integers"):
        _model(kernel_sizes_top_down="3")


def test_incompatibility_reasons() -> None:
    assert VDVAE3D.incompatibility(_spec((32, 32, 32))) is None
    assert VDVAE3D.incompatibility(_spec((32, 32), dims=2)) == "vdvae3d is 3D; dataset is 2D"
    reason = VDVAE3D.incompatibility(_spec(modalities=("A", "B")))
    assert reason == "vdvae3d models single-modality data; dataset is paired (A, B)"
    assert VDVAE3D.incompatibility(_spec((32, 32, 16))) == "vdvae3d needs cubic volumes; dataset is 32x32x16"
    expected = "vdvae3d needs a power-of-two edge of at least 2 (it halves the volume down to 1^3); got"
    for size in (24, 1):
        assert VDVAE3D.incompatibility(_spec((size,) * 3)) == f"{expected} {size}"
    # Given the resolved config: per-resolution lists made for another edge (the engine skips the cell).
    reason = VDVAE3D.incompatibility(_spec((64, 64, 64)), VDVAE3D.configs["32"])
    assert reason == (
        "vdvae3d config list 'channels' has 6 entries, one per resolution; "
        "64^3 volumes need 7 (resolutions 64 down to 1)"
    )
    assert VDVAE3D.incompatibility(_spec((64, 64, 64)), VDVAE3D.configs["tiny"]) is None  # one-integer lists


@pytest.mark.parametrize("size", [8, 16])
def test_shapes_through_the_network(size: int) -> None:
    model = _model(size)
    x = _volumes(2, size)
    skips = model.encoder(x)
    assert [tuple(s.shape) for s in skips] == [(2, 8, size >> k, size >> k, size >> k) for k in range(len(skips))]
    assert skips[-1].shape[-1] == 1
    mean, std, kls = model(x)
    assert mean.shape == std.shape == x.shape
    assert mean.abs().max() <= 1.0 and std.min() >= 0.01 and std.max() <= 1.0
    levels = int(math.log2(size)) + 1
    assert len(kls) == levels and all(kl.shape == (2,) for kl in kls)  # one latent layer per level
    assert model.decoder.resolutions == [1 << k for k in range(levels)]
    assert model.reconstruct(x, "image").shape == x.shape
    assert model.sample(3, temperature=1.0).shape == (3, 1, size, size, size)


# Latent layers, init depth (latents + 2 * (levels - 1)) and parameter count of each source config.
_SOURCE = {"32": (17, 27, 10_335_682), "64": (23, 35, 19_267_582), "128": (30, 44, 32_749_282)}


@pytest.mark.parametrize("name", sorted(_SOURCE))
def test_source_config_structure(name: str) -> None:
    cfg = VDVAE3D.configs[name]
    size = int(name)
    with torch.device("meta"):  # the 128^3 model is built without allocating or running it
        model = VDVAE3D(cfg, _spec((size,) * 3))
    n_latents, depth, n_params = _SOURCE[name]
    assert model.depth == depth
    assert sum(p.numel() for p in model.parameters()) == n_params
    channels, latents = cfg["channels"], cfg["latents_per_channel"]
    top = len(channels) - 1
    assert len(model.encoder.levels) == top + 1
    for k, level in enumerate(model.encoder.levels):
        assert [b.body[-1].out_channels for b in level] == [channels[k]] * 2
        kernels = {m.conv.kernel_size[0] for m in level.modules() if isinstance(m, PaddedConv3d)}
        assert kernels == {cfg["kernel_sizes_bottom_up"][k]}
    # Decoder levels run from 1^3 up; each holds latents[k] (latent block, ConvBlock) pairs.
    assert model.decoder.level_index == list(range(top, -1, -1))
    assert [len(level) for level in model.decoder.levels] == latents[::-1]
    assert len(model.decoder.resolutions) == sum(latents) == n_latents
    for k, level in zip(model.decoder.level_index, model.decoder.levels, strict=True):
        for i, (latent, conv) in enumerate(level):
            first = k == top and i == 0
            assert isinstance(latent, TopLatentBlock if first else LatentBlock)
            assert latent.q_mu.out_channels == min(cfg["channels_per_latent"][k], channels[k])
            assert isinstance(conv, ConvBlock) and conv.residual == (k > 0)  # full resolution: no skip
            # Only the first block after an upsampling to a narrower level projects its input.
            if not first:
                assert (latent.skip is not None) == (i == 0)
            convs = [m for part in (latent, conv) for m in part.modules() if isinstance(m, PaddedConv3d)]
            assert {m.conv.kernel_size[0] for m in convs} == {cfg["kernel_sizes_top_down"][k]}
    assert model.decoder.levels[0][0][0].q_mu.out_channels == channels[-1]  # min(200, width) at 1^3
    assert model.head.body[-1].in_channels == channels[0]


def test_initialisation_follows_the_source() -> None:
    model = _model(16)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    block = model.decoder.levels[1][0][0]
    for conv in (block.p_mu, block.p_raw, block.prior_skip):
        assert torch.count_nonzero(conv.weight) == 0
    # conv_z and the last conv of residual blocks start at PyTorch's default init scaled by 1 / sqrt(depth):
    # kaiming-uniform(a=sqrt(5)) draws within 1 / sqrt(fan_in).
    scale = 1.0 / math.sqrt(model.depth)
    assert block.conv_z.weight.abs().max() <= scale / math.sqrt(block.conv_z.in_channels)
    last = model.encoder.levels[0][1].body[-1]
    assert last.weight.abs().max() <= scale / math.sqrt(last.in_channels)
    unscaled = model.decoder.levels[-1][0][1].body[-1]  # full resolution: not residual, not scaled
    assert unscaled.weight.abs().max() > scale / math.sqrt(unscaled.in_channels)


def test_padding_keeps_the_size() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    for kernel in (1, 2, 3, 5):
        assert PaddedConv3d(2, 3, kernel)(x).shape == (1, 3, 4, 4, 4)
    assert PaddedConv3d(2, 3, 2).pad == (1, 0, 1, 0, 1, 0)


def test_kl_and_likelihood_match_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 2, 2, 2, generator=g)
    std_q, std_p = torch.rand(2, 3, 2, 2, 2, generator=g) + 0.1, torch.rand(2, 3, 2, 2, 2, generator=g) + 0.1
    d = torch.distributions
    expected = d.kl_divergence(d.Normal(mu_q, std_q), d.Normal(mu_p, std_p))
    torch.testing.assert_close(gaussian_kl(mu_q, std_q, mu_p, std_p), expected)
    expected = d.kl_divergence(d.Normal(mu_q, std_q), d.Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu_q, std_q), expected)
    x = torch.rand(2, 3, 2, 2, 2, generator=g)
    torch.testing.assert_close(GaussianHead.nll(mu_q, std_q, x), -d.Normal(mu_q, std_q).log_prob(x).sum((1, 2, 3, 4)))


def test_elbo_is_reconstruction_plus_kl() -> None:
    model = _model(8)
    x = _volumes(3)
    torch.manual_seed(0)
    out = model.loss({"image": x})
    torch.testing.assert_close(out["neg_elbo"], out["nll"] + out["kl"])
    torch.testing.assert_close(out["bpd"], out["neg_elbo"] / (8**3 * math.log(2.0)))
    l2 = sum(p.pow(2).mean() for p in model.parameters() if p.dim() > 1)
    torch.testing.assert_close(out["l2"], 1e-4 * l2)
    torch.testing.assert_close(out["loss"].detach(), out["neg_elbo"] + out["l2"])
    t = model.terms(x)
    assert (t["kl_layers"] >= 0).all() and (t["kl"] >= 0).all()

    metrics = model.evaluation_metrics([{"image": x[:2]}, {"image": x[2:]}])
    assert metrics["elbo"] == pytest.approx(-(metrics["nll"] + metrics["kl"]))
    assert metrics["bpd"] == pytest.approx(-metrics["elbo"] / (8**3 * math.log(2.0)))
    per_res = [metrics[f"kl/res{r}"] for r in (8, 4, 2, 1)]
    assert all(v >= 0 for v in per_res) and sum(per_res) == pytest.approx(metrics["kl"], rel=1e-5)
    assert metrics == model.evaluation_metrics([{"image": x[:2]}, {"image": x[2:]}])  # fixed posterior seed


def test_temperature_zero_sampling_is_deterministic() -> None:
    model = _model(8)
    with torch.no_grad():  # give the zero-initialised priors something to say
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(1))
    b = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a[0], a[1])
    c = model.sample(2, temperature=1.0, generator=torch.Generator().manual_seed(1))
    d = model.sample(2, temperature=1.0, generator=torch.Generator().manual_seed(1))
    e = model.sample(2, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, d) and not torch.equal(c, e)
    assert c.abs().max() <= 1.0
    x = _volumes(2)
    assert torch.equal(model.reconstruct(x, "image"), model.reconstruct(x, "image"))  # posterior means
    with pytest.raises(BenchError, match="modality 'image', not 'flair'"):
        model.reconstruct(x, "flair")


def test_engine_training_lowers_the_loss(tmp_path: Path) -> None:
    model = _model(8)
    data = _volumes(16, seed=3)
    before = model.evaluation_metrics([{"image": data}])["elbo"]
    (stage,) = model.stages()
    settings = TrainSettings(device=torch.device("cpu"), progress=False, steps=60)
    report = run_stage(model, stage, _Volumes(data), settings, tmp_path / "s.pt")
    assert report.steps == 60 and report.skipped == 0
    after = model.evaluation_metrics([{"image": data}])["elbo"]
    assert after > before + 20.0, (before, after)  # nats per 8^3 volume


def test_state_dict_round_trip() -> None:
    model = _model(8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    copy = _model(8, seed=1)
    copy.load_state_dict(model.state_dict())
    x = _volumes(2)
    assert torch.equal(copy.reconstruct(x, "image"), model.reconstruct(x, "image"))
    assert torch.equal(copy.sample(2, temperature=0.0), model.sample(2, temperature=0.0))


def _grads(model: VDVAE3D, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one training loss and the bytes autograd saved for the backward pass."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    model.zero_grad()
    torch.manual_seed(5)  # the same posterior noise for both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss({"image": x})["loss"]
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved.values())


def test_checkpointing_gives_the_same_gradients() -> None:
    x = _volumes(2, 16)
    model = _model(16)
    plain, plain_bytes = _grads(model, x)
    model.set_checkpointing(True)
    ckpt, ckpt_bytes = _grads(model, x)
    assert ckpt_bytes < 0.5 * plain_bytes  # activations are recomputed, not stored
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The config key switches it on; evaluation never checkpoints.
    assert _model(16, checkpointing=True).decoder.checkpointing


def test_bf16_autocast_keeps_statistics_in_float32() -> None:
    model = _model(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss({"image": _volumes(2)})
        sample = model.sample(2)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    assert sample.dtype == torch.float32 and torch.isfinite(sample).all()


@pytest.mark.parametrize("config", sorted(VDVAE3D.configs))
def test_configs_reject_unknown_keys(config: str) -> None:
    with pytest.raises(BenchError, match="unknown config key 'chanels'"):
        merge_config(VDVAE3D.configs[config], {"chanels": [4]})
    assert merge_config(VDVAE3D.configs[config], {"checkpointing": True})["checkpointing"] is True
