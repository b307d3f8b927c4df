"""Tests of the ``phvae`` model plugin and its building blocks in ``hvae_layers``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench_core.api import API_VERSION, RECONSTRUCT, SAMPLE, TRANSLATE, BenchError, DataSpec, ModelPlugin, merge_config
from bench_core.testing import check_model_plugin
from bench_core.trainer import TrainSettings, run_stage
from bench_plugins.models.hvae_layers import (
    DmolHead,
    Encoder,
    TopDownBlock,
    Unpool,
    gaussian_kl,
    softplus_std,
)
from bench_plugins.models.phvae import PHVAE, bench_models


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small models: extra intra-op threads only spin-wait on the shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(size: int = 16, channels: tuple[int, int] = (3, 1), train: int = 40) -> DataSpec:
    return DataSpec(("A", "B"), channels, 2, (size, size), (-1.0, 1.0), {"train": train, "val": 4, "test": 4})


def _model(size: int = 16, channels: tuple[int, int] = (3, 1), seed: int = 0, **overrides) -> PHVAE:
    torch.manual_seed(seed)
    return PHVAE(merge_config(PHVAE.configs["tiny"], overrides), _spec(size, channels))


def _pairs(n: int, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth RGB images in [-1, 1] and a one-channel "NDVI" derived from them (a learnable mapping)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bilinear")
    a = 2.0 * x - 1.0
    b = (a[:, 1:2] - a[:, :1]).clamp(-1.0, 1.0)
    return {"A": a, "B": b}


class _Items:
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return self.batch["A"].shape[0]

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"A": self.batch["A"][i], "B": self.batch["B"][i], "id": f"item{i}"}


# -- plugin contract and configs ------------------------------------------------------------


def test_plugin_contract_and_stages() -> None:
    assert bench_models() == [PHVAE]
    assert PHVAE.api_version == API_VERSION
    assert PHVAE.capabilities == {RECONSTRUCT, TRANSLATE, SAMPLE}
    model = _model()
    assert isinstance(model, ModelPlugin)
    (stage,) = model.stages()
    assert (stage.name, stage.optimizer.name, stage.optimizer.lr) == ("main", "adamax", 2e-3)
    assert (stage.grad_clip, stage.skip_threshold, stage.default_steps) == (300.0, None, 200)
    assert set(stage.parameters()) == set(model.parameters())


def test_conformance_kit() -> None:
    check_model_plugin(PHVAE, config="tiny")


@pytest.mark.parametrize(
    ("config", "channels", "head_out"),
    [("ndvi-rgb-nll", (3, 1), (10, 3)), ("ndvi-rgb-mae", (3, 1), (3, 1)), ("mri-ct-nll", (1, 1), (3, 3))],
)
def test_paper_config_structure(config: str, channels: tuple[int, int], head_out: tuple[int, int]) -> None:
    cfg = PHVAE.configs[config]
    assert (cfg["width"], cfg["n_resolutions"], cfg["blocks_per_resolution"], cfg["zdim"]) == (72, 9, 5, 6)
    assert (cfg["bottleneck"], cfg["dmol_mixtures"], cfg["dmol_bits"], cfg["eval_temperature"]) == (0.8, 1, 6, 0.0)
    model = PHVAE(cfg, _spec(256, channels, train=1000))
    for branch, out in zip(model.branches, head_out, strict=True):
        groups = branch.decoder.groups
        assert len(groups) == 45 and len(branch.encoder.blocks) == 45
        assert [g.size for g in groups[::5]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
        assert sum(isinstance(m, Unpool) for m in branch.decoder.layers) == 8
        assert branch.decoder.head.conv.out_channels == out
        # models.md 1.2: about 19.06 M parameters per branch.
        assert sum(p.numel() for p in branch.parameters()) == pytest.approx(19.06e6, rel=2e-3)
    (stage,) = model.stages()
    # Batch 1 with 5 passes per update, as the source's step_freq = 5.
    assert (stage.batch_size, stage.accumulate, stage.default_steps, stage.grad_clip) == (1, 5, 100 * 200, 300.0)
    # The same architecture at 32x32 (4 resolutions) runs forward on one pair.
    small = PHVAE(merge_config(cfg, {"n_resolutions": 4}), _spec(32, channels))
    batch = {"A": torch.rand(1, channels[0], 32, 32) * 2 - 1, "B": torch.rand(1, channels[1], 32, 32) * 2 - 1}
    out = small.loss(batch)
    assert torch.isfinite(out["loss"]) and len(out) == 9
    assert small.translate(batch["A"], "A", "B").shape == batch["B"].shape


def test_mri_ct_mae_warmup_stage() -> None:
    model = PHVAE(merge_config(PHVAE.configs["mri-ct-mae"], {"n_resolutions": 3}), _spec(16, (1, 1), train=37))
    warmup, main = model.stages()
    assert (warmup.name, warmup.batch_size, warmup.grad_clip, warmup.default_steps) == ("warmup", 1, None, 37)
    assert (main.name, main.batch_size, main.accumulate, main.grad_clip, main.default_steps) == (
        "main", 1, 5, 300.0, 100 * 7,
    )  # fmt: skip
    # The warm-up sees the data unaugmented; the main stage continues its Adamax state.
    assert (warmup.augment, warmup.continue_optimizer, main.continue_optimizer) == (False, False, True)
    batch = _pairs(2)
    batch["A"] = batch["A"][:, :1]
    out = warmup.loss(batch)
    assert set(out) == {"loss", "rec_A", "kl_A", "rec_B", "kl_B"}  # reconstruction terms only
    out["loss"].backward()
    for branch in model.branches:
        for block in branch.decoder.groups:
            assert all(p.grad is None for p in block.translational.parameters())
            assert block.posterior.convs[0].weight.grad is not None


def test_warmup_needs_a_train_size() -> None:
    spec = DataSpec(("A", "B"), (1, 1), 2, (16, 16), (-1.0, 1.0))
    model = PHVAE(merge_config(PHVAE.configs["mri-ct-mae"], {"n_resolutions": 3}), spec)
    with pytest.raises(BenchError, match="train_size"):
        model.stages()
    fixed = PHVAE(merge_config(PHVAE.configs["mri-ct-mae"], {"n_resolutions": 3, "train_size": 12}), spec)
    assert [s.default_steps for s in fixed.stages()] == [12, 100 * 2]


def test_incompatibility_reasons() -> None:
    assert PHVAE.incompatibility(_spec(32)) is None
    assert "3D" in PHVAE.incompatibility(DataSpec(("A", "B"), (1, 1), 3, (16, 16, 16), (-1.0, 1.0)))
    assert "two paired" in PHVAE.incompatibility(DataSpec(("image",), (1,), 2, (32, 32), (-1.0, 1.0)))
    assert "square" in PHVAE.incompatibility(DataSpec(("A", "B"), (1, 1), 2, (64, 32), (-1.0, 1.0)))
    assert "power-of-two" in PHVAE.incompatibility(DataSpec(("A", "B"), (1, 1), 2, (48, 48), (-1.0, 1.0)))
    with pytest.raises(BenchError, match="cannot be halved 8 times"):
        PHVAE(PHVAE.configs["ndvi-rgb-nll"], _spec(64))
    # Given the resolved config: a size its resolutions cannot halve (skipped before any build).
    reason = PHVAE.incompatibility(_spec(64), PHVAE.configs["ndvi-rgb-nll"])
    assert reason == "phvae with n_resolutions 9 halves the images 8 times; 64x64 is too small"
    assert PHVAE.incompatibility(_spec(64), PHVAE.configs["tiny"]) is None
    ct_mr = DataSpec(("ct", "mr"), (1, 1), 2, (32, 32), ranges=((-1000.0, 3000.0), (0.0, 1.0)))
    reason = PHVAE.incompatibility(ct_mr)
    assert reason == "phvae maps both modalities with one value range; dataset has ct (-1000.0, 3000.0), mr (0.0, 1.0)"


# -- building blocks ------------------------------------------------------------------------


def test_gaussian_kl() -> None:
    mu, std = torch.randn(5), torch.rand(5) + 0.1
    assert torch.allclose(gaussian_kl(mu, std, mu, std), torch.zeros(5), atol=1e-6)
    # KL(N(1, 0.5^2) || N(0, 2^2)) = ln(2 / 0.5) + (0.25 + 1) / 8 - 0.5
    value = gaussian_kl(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.0), torch.tensor(2.0))
    assert value.item() == pytest.approx(math.log(4.0) + 1.25 / 8 - 0.5, abs=1e-6)


def test_softplus_std_and_temperature() -> None:
    raw = torch.tensor([0.0, 1.0, -3.0])
    assert softplus_std(raw)[0].item() == pytest.approx(1.0)  # std = 1 at raw = 0 (beta = ln 2)
    assert softplus_std(raw[1:2]).item() == pytest.approx(math.log1p(2.0) / math.log(2.0), rel=1e-6)
    assert torch.equal(softplus_std(raw, 0.0), torch.zeros(3))
    # softplus_b(x) = log(1 + exp(b x)) / b with b = ln 2, at x = 0 + ln 0.5
    expected = math.log1p(math.exp(math.log(2.0) * math.log(0.5))) / math.log(2.0)
    assert softplus_std(raw, 0.5)[0].item() == pytest.approx(expected, rel=1e-6)


def _dmol_params(head: DmolHead, n: int, mean: float, raw: float) -> torch.Tensor:
    m, c = head.mixtures, head.channels
    params = torch.zeros(n, head.conv.out_channels, 1, 1)
    params[:, m : m + c * m] = mean
    params[:, m + c * m : m + 2 * c * m] = raw
    return params


def test_dmol_log_prob_by_hand() -> None:
    head = DmolHead(4, channels=1, mixtures=1, bits=6)
    raw = 0.5
    scale = math.log1p(math.exp(raw * math.log(2.0))) / math.log(2.0)
    params = _dmol_params(head, 3, mean=0.1, raw=raw)
    x = torch.tensor([0.0, -1.0, 1.0]).reshape(3, 1, 1, 1)
    got = head.log_prob(params, x).flatten()

    def sigmoid(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    half = 1.0 / 63.0
    inner = sigmoid((0.0 - 0.1 + half) / scale) - sigmoid((0.0 - 0.1 - half) / scale)
    first = sigmoid((-1.0 - 0.1 + half) / scale)
    last = 1.0 - sigmoid((1.0 - 0.1 - half) / scale)
    assert got.tolist() == pytest.approx([math.log(inner), math.log(first), math.log(last)], rel=1e-5)
    assert head.nll(params[:1], x[:1]).item() == pytest.approx(-math.log(inner), rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_normalises_over_bins(channels: int) -> None:
    torch.manual_seed(0)
    head = DmolHead(4, channels=channels, mixtures=1, bits=6)
    levels = torch.linspace(-1.0, 1.0, 64)
    grid = torch.cartesian_prod(*([levels] * channels)).reshape(-1, channels, 1, 1)
    params = head(torch.randn(1, 4, 1, 1)).detach()
    params[:, 1 + channels : 1 + 2 * channels] = 0.3  # scales wide enough that every bin is above 1e-5
    total = head.log_prob(params.expand(grid.shape[0], -1, -1, -1), grid).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_dmol_sample_at_zero_temperature_is_the_chained_mean() -> None:
    head = DmolHead(4, channels=3, mixtures=1, bits=6)
    params = _dmol_params(head, 1, mean=0.2, raw=0.0)
    params[:, 7:10] = 10.0  # tanh -> 1: each channel adds every earlier channel's value
    out = head.sample(params, temperature=0.0).flatten().tolist()
    assert out == pytest.approx([0.2, 0.4, 0.8], abs=1e-4)
    noisy = head.sample(params, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert noisy.abs().max() <= 1.0


def test_encoder_and_top_down_block_shapes() -> None:
    enc = Encoder(3, 8, [16, 8, 4], blocks=2, bottleneck=0.5)
    acts = enc(torch.randn(2, 3, 16, 16))
    assert {k: tuple(v.shape) for k, v in acts.items()} == {16: (2, 8, 16, 16), 8: (2, 8, 8, 8), 4: (2, 8, 4, 4)}
    block = TopDownBlock(4, 8, zdim=4, n_blocks=6, bottleneck=0.5, translational=True)
    h, kl = block(torch.randn(2, 8, 4, 4), acts[4], translate=True)
    assert h.shape == (2, 8, 4, 4) and kl.shape == (2, 4, 4, 4)
    assert torch.allclose(kl[:, :2], torch.zeros_like(kl[:, :2]), atol=1e-6)  # style half follows the prior
    with pytest.raises(ValueError, match="zdim must be even"):
        TopDownBlock(4, 8, zdim=3, n_blocks=1, bottleneck=0.5, translational=True)


# -- capabilities ---------------------------------------------------------------------------


def test_output_shapes_and_channels() -> None:
    model = _model().eval()
    batch = _pairs(2)
    assert model.reconstruct(batch["A"], "A").shape == (2, 3, 16, 16)
    assert model.reconstruct(batch["B"], "B").shape == (2, 1, 16, 16)
    assert model.translate(batch["A"], "A", "B").shape == (2, 1, 16, 16)
    assert model.translate(batch["B"], "B", "A").shape == (2, 3, 16, 16)
    assert model.sample(3, temperature=1.0, generator=torch.Generator().manual_seed(0)).shape == (3, 3, 16, 16)
    with pytest.raises(BenchError, match="not 'C'"):
        model.reconstruct(batch["A"], "C")


def test_value_range_is_respected() -> None:
    spec = DataSpec(("A", "B"), (1, 1), 2, (16, 16), (0.0, 1.0), {"train": 8})
    torch.manual_seed(0)
    model = PHVAE(PHVAE.configs["tiny"], spec)
    y = model.translate(torch.rand(2, 1, 16, 16), "A", "B")
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_temperature_zero_is_deterministic() -> None:
    model = _model()
    x = _pairs(2)["A"]
    for task in (lambda: model.reconstruct(x, "A"), lambda: model.translate(x, "A", "B")):
        torch.manual_seed(1)
        first = task()
        torch.manual_seed(2)
        assert torch.equal(first, task())
    assert torch.equal(model.sample(2, temperature=0.0), model.sample(2, temperature=0.0))
    model.temperature = 1.0
    assert not torch.equal(model.reconstruct(x, "A"), model.reconstruct(x, "A"))


def test_state_dict_round_trip() -> None:
    model = _model(seed=0)
    twin = _model(seed=1)
    x = _pairs(2)["B"]
    assert not torch.equal(model.translate(x, "B", "A"), twin.translate(x, "B", "A"))
    twin.load_state_dict(model.state_dict())
    assert torch.equal(model.translate(x, "B", "A"), twin.translate(x, "B", "A"))


def test_temperature_argument_overrides_the_config() -> None:
    model = _model().eval()  # config eval_temperature 0.0
    x = _pairs(2)["B"]
    default = model.translate(x, "B", "A")
    assert torch.equal(model.translate(x, "B", "A", temperature=0.0), default)
    torch.manual_seed(1)
    hot = model.translate(x, "B", "A", temperature=1.0)
    assert not torch.equal(hot, default) and model.temperature == 0.0
    assert torch.equal(model.reconstruct(x, "B", temperature=0.0), model.translate(x, "B", "B"))


# -- training and evaluation metrics --------------------------------------------------------


def test_training_through_the_engine_lowers_the_loss(tmp_path: Path) -> None:
    model = _model(seed=0)
    (stage,) = model.stages()
    data = _Items(_pairs(16, seed=3))
    settings = TrainSettings(device=torch.device("cpu"), steps=40, batch_size=4, progress=False, seed=0)
    report = run_stage(model, stage, data, settings, tmp_path / "state.pt")
    assert report.steps == 40 and report.skipped == 0
    losses = [p["loss"] for p in report.curve]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_evaluation_metrics_keys() -> None:
    model = _model()
    loader = [_pairs(3, seed=4), _pairs(2, seed=5)]
    values = model.evaluation_metrics(loader)
    for m in ("A", "B"):
        assert {f"elbo/{m}", f"bpd/{m}", f"nll/{m}", f"kl/{m}", f"collapsed_groups/{m}"} <= set(values)
        groups = [values[f"kl/{m}/group{g:02d}"] for g in range(3)]
        assert sum(groups) == pytest.approx(values[f"kl/{m}"], rel=1e-5)
        assert values[f"elbo/{m}"] < 0 and values[f"bpd/{m}"] > 0
    dims = 3 * 16 * 16
    assert values["bpd/A"] == pytest.approx(-values["elbo/A"] / (dims * math.log(2.0)))
    assert "posterior_collapse" in values
    mae = _model(head="mae").evaluation_metrics(loader)
    assert {"mae/A", "mae/B", "kl/A/group00"} <= set(mae) and "elbo/A" not in mae


def test_evaluation_metrics_flag_forced_collapse() -> None:
    model = _model()
    fresh = model.evaluation_metrics([_pairs(2)])
    assert fresh["collapsed_groups/A"] < 3
    with torch.no_grad():
        for branch in model.branches:
            for block in branch.decoder.groups:
                # Posterior and prior both output zeros: q = p = N(0, 1) in every group.
                for net in (block.posterior, block.prior):
                    net.convs[-1].weight.zero_()
                    net.convs[-1].bias.zero_()
    values = model.evaluation_metrics([_pairs(2)])
    assert values["collapsed_groups/A"] == values["collapsed_groups/B"] == 3.0
    assert values["posterior_collapse"] == 1.0
    assert values["kl/A"] == pytest.approx(0.0, abs=1e-6)


# -- activation checkpointing -----------------------------------------------------------------


def _grads_and_loss(mode: str, head: str = "dmol") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    # Two blocks per resolution, so "resolution" groups several blocks (and an Unpool) per recomputation.
    model = _model(seed=0, checkpointing=mode, blocks_per_resolution=2, head=head).train()
    torch.manual_seed(7)  # the latents are drawn from the posteriors (temperature 1) on the global stream
    out = model.loss(_pairs(2, seed=5))
    out["loss"].backward()
    after = torch.randn(3)  # where the global stream stands after forward and backward
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, {**{k: v.detach() for k, v in out.items()}, "rng_after": after}


@pytest.mark.parametrize("head", ["dmol", "mae"])
def test_checkpointing_leaves_loss_and_gradients_identical(head: str) -> None:
    plain_grads, plain_out = _grads_and_loss("none", head)
    assert len(plain_grads) == sum(1 for _ in _model(blocks_per_resolution=2, head=head).parameters())
    for mode in ("block", "resolution"):
        grads, out = _grads_and_loss(mode, head)
        # The recomputed blocks replay the same posterior noise: every value and gradient is bit for bit
        # the same, and the global RNG stream ends where it ends without checkpointing.
        assert out.keys() == plain_out.keys()
        for key, value in plain_out.items():
            assert torch.equal(out[key], value), (mode, key)
        assert grads.keys() == plain_grads.keys()
        different = [name for name, g in plain_grads.items() if not torch.equal(grads[name], g)]
        assert not different, (mode, different[:5])


def test_checkpointing_recomputes_instead_of_storing() -> None:
    def saved_bytes(mode: str) -> int:
        model = _model(size=32, seed=0, checkpointing=mode, blocks_per_resolution=2).train()
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(_pairs(2, size=32))
        return sum(saved.values())

    plain, block, resolution = (saved_bytes(m) for m in ("none", "block", "resolution"))
    assert block < plain / 3 and resolution < block


def test_checkpointing_option() -> None:
    assert all(cfg["checkpointing"] == "none" for cfg in PHVAE.configs.values())  # the source's memory use
    model = _model(checkpointing="block")
    assert {b.encoder.checkpointing for b in model.branches} == {b.decoder.checkpointing for b in model.branches}
    assert model.branches[0].decoder.checkpointing == "block"
    with pytest.raises(BenchError, match="checkpointing must be one of none, block, resolution"):
        _model(checkpointing=True)
    # Evaluation and seeded draws (an explicit generator) never go through the checkpoint.
    x = _pairs(2)["A"]
    plain = _model(seed=0).eval()
    assert torch.equal(model.eval().translate(x, "A", "B", temperature=0.0), plain.translate(x, "A", "B"))
    assert model.evaluation_metrics([_pairs(2)]) == plain.evaluation_metrics([_pairs(2)])


def test_channels_last_is_the_same_model_within_rounding() -> None:
    assert PHVAE.configs["tiny"]["channels_last"] is True
    assert not any(cfg["channels_last"] for name, cfg in PHVAE.configs.items() if name != "tiny")
    fast = _model(seed=0, channels_last=True)
    plain = _model(seed=0, channels_last=False)
    plain.load_state_dict(fast.state_dict())  # the same weights, stored channels-first
    conv = fast.branches[0].decoder.groups[0].prior.convs[1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.branches[0].decoder.groups[0].prior.convs[1].weight.is_contiguous()
    batch = _pairs(2)
    for model in (fast, plain):
        model.eval()
    x = batch["A"]
    out_fast, out_plain = fast.translate(x, "A", "B"), plain.translate(x, "A", "B")
    assert out_fast.is_contiguous() and (out_fast - out_plain).abs().max() < 1e-5
    torch.manual_seed(3)
    loss_fast = fast.train().loss(batch)
    torch.manual_seed(3)
    loss_plain = plain.train().loss(batch)
    for key, value in loss_plain.items():
        assert abs(float(loss_fast[key].detach()) - float(value.detach())) < 1e-5, key
    loss_fast["loss"].backward()
    loss_plain["loss"].backward()
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        scale = float(grads[name].grad.abs().max()) + 1e-12
        assert float((p.grad - grads[name].grad).abs().max()) / scale < 1e-4, name


def test_the_engines_compile_reaches_the_encoders_and_decoders() -> None:
    """phvae's only child is a ModuleList that is never called: compile_children goes down to the called parts."""
    from bench_core.torchutil import compile_children

    model = _model(seed=0).eval()
    x = _pairs(2)["A"]
    before = model.translate(x, "A", "B", temperature=0.0)
    # The "eager" backend exercises the compile path on CPU without a C++ toolchain.
    names = compile_children(model, backend="eager")
    assert names == ["branches.0.encoder", "branches.0.decoder", "branches.1.encoder", "branches.1.decoder"]
    assert all(model.get_submodule(name)._compiled_call_impl is not None for name in names)
    assert torch.allclose(model.translate(x, "A", "B", temperature=0.0), before, atol=1e-6)
