"""Tests of the ``vqvae2`` model plugin and the shared two-level network in ``vq2_layers``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench_core.api import API_VERSION, RECONSTRUCT, BenchError, DataSpec, ModelPlugin, merge_config
from bench_core.testing import check_model_plugin
from bench_plugins.models.vq2_layers import latent_shapes, to_memory_format
from bench_plugins.models.vqvae2 import VQVAE2, bench_models


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small CPU models: extra intra-op threads spin-wait on the shared 2-core machine and make
    # single tests swing from one second to tens of seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(shape: tuple[int, ...] = (32, 32), modalities: tuple[str, ...] = ("image",), dims: int = 2) -> DataSpec:
    return DataSpec(modalities, (1,) * len(modalities), dims, shape, (-1.0, 1.0))


def _model(shape: tuple[int, int] = (32, 32), seed: int = 0, config: str = "tiny", **overrides) -> VQVAE2:
    torch.manual_seed(seed)
    return VQVAE2(merge_config(VQVAE2.configs[config], overrides), _spec(shape))


def _smooth_images(n: int, shape: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    """Blurred noise scaled to [-1, 1]: smooth structure a small VQ-VAE learns quickly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *shape, generator=g)
    for _ in range(3):
        x = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (x - lo) / (hi - lo) - 1


def _ema_state(model: VQVAE2) -> dict[str, torch.Tensor]:
    quantizers = {"t": model.net.quantize_t, "b": model.net.quantize_b}
    return {f"{name}.{k}": v.clone() for name, q in quantizers.items() for k, v in q.state_dict().items()}


def test_plugin_contract() -> None:
    assert bench_models() == [VQVAE2]
    assert VQVAE2.api_version == API_VERSION
    assert VQVAE2.capabilities == {RECONSTRUCT}
    assert set(VQVAE2.configs) == {"seed002-oasis", "seed004-hipmri", "tiny"}
    model = _model()
    assert isinstance(model, ModelPlugin)
    (stage,) = model.stages()
    cfg = VQVAE2.configs["tiny"]
    assert (stage.name, stage.optimizer.name, stage.optimizer.lr) == ("vqvae", "adam", cfg["lr"])
    assert (stage.batch_size, stage.default_steps, stage.frozen) == (cfg["batch_size"], cfg["steps"], None)
    assert set(stage.parameters()) == set(model.parameters())
    out = stage.loss({"image": _smooth_images(2), "id": ["a", "b"]})
    assert {"loss", "recon", "commit_top", "commit_bottom", "perplexity_top", "perplexity_bottom"} <= set(out)
    assert out["loss"].requires_grad and not out["recon"].requires_grad
    # Loss = MSE + beta * (commit_top + commit_bottom); the EMA codebooks have no loss term.
    expected = out["recon"] + cfg["beta"] * (out["commit_top"] + out["commit_bottom"])
    torch.testing.assert_close(out["loss"].detach(), expected)


@pytest.mark.parametrize(
    ("config", "lr", "batch"),
    [("seed002-oasis", 1e-3, 64), ("seed004-hipmri", 3e-5, 10)],
)
def test_source_hyperparameters(config: str, lr: float, batch: int) -> None:
    cfg = VQVAE2.configs[config]
    assert (cfg["lr"], cfg["batch_size"], cfg["n_embeddings"], cfg["embedding_dim"]) == (lr, batch, 512, 64)
    assert (cfg["ema_decay"], cfg["beta"], cfg["dead_code_restart"], cfg["channels_last"]) == (0.99, 0.25, False, False)


@pytest.mark.parametrize(
    ("config", "shape", "top", "bottom"),
    [
        ("seed002-oasis", (64, 64), (16, 16), (32, 32)),
        ("seed002-oasis", (256, 128), (64, 32), (128, 64)),
        ("seed004-hipmri", (256, 128), (32, 16), (64, 32)),
        ("seed004-hipmri", (64, 64), (8, 8), (16, 16)),
        ("tiny", (64, 32), (8, 4), (16, 8)),
    ],
)
def test_shapes_and_latent_grids(config: str, shape: tuple[int, int], top: tuple, bottom: tuple) -> None:
    model = _model(shape, config=config).eval()
    x = torch.rand(1, 1, *shape) * 2 - 1
    with torch.no_grad():
        out = model(x)
    dim = VQVAE2.configs[config]["embedding_dim"]
    assert latent_shapes(shape, VQVAE2.configs[config]["bottom_down"]) == (top, bottom)
    assert out.reconstruction.shape == x.shape
    assert (out.top.indices.shape, out.bottom.indices.shape) == ((1, *top), (1, *bottom))
    assert (out.top.quantized.shape, out.bottom.quantized.shape) == ((1, dim, *top), (1, dim, *bottom))
    assert model.decode_codes(out.top.indices, out.bottom.indices).shape == x.shape


def test_layer_layouts_follow_their_sources() -> None:
    seed002, seed004 = _model(config="seed002-oasis"), _model(config="seed004-hipmri")
    kinds002 = {type(m) for m in seed002.modules()}
    kinds004 = {type(m) for m in seed004.modules()}
    assert nn.BatchNorm2d in kinds002 and nn.Dropout in kinds002
    assert nn.BatchNorm2d not in kinds004 and nn.Dropout not in kinds004
    # Seed 002's residual convolutions have no bias (batch norm follows them).
    res_convs = [m for name, m in seed002.net.enc_b.named_modules() if isinstance(m, nn.Conv2d) and ".body." in name]
    assert res_convs and all(c.bias is None for c in res_convs)
    # Seed 004's stride-2 top encoder goes through hidden/2 channels, as rosinality's does.
    assert seed004.net.enc_t[0].out_channels == VQVAE2.configs["seed004-hipmri"]["hidden"] // 2


def test_ema_codebooks_move_only_in_training_mode() -> None:
    model = _model()
    x = _smooth_images(4)
    before = _ema_state(model)

    def unchanged() -> bool:
        return all(torch.equal(before[k], v) for k, v in _ema_state(model).items())

    model.eval()
    with torch.no_grad():
        model(x)
    assert unchanged()
    # The evaluation paths switch to eval mode themselves and restore the caller's mode.
    model.train()
    model.reconstruct(x, "image")
    model.evaluation_metrics([{"image": x}])
    assert unchanged() and model.training
    model(x)
    after = _ema_state(model)
    for level in ("t", "b"):
        assert not torch.equal(before[f"{level}.codebook"], after[f"{level}.codebook"])
        assert not torch.equal(before[f"{level}.cluster_size"], after[f"{level}.cluster_size"])


def test_dead_code_restart_is_an_option() -> None:
    assert not any(VQVAE2.configs[c]["dead_code_restart"] for c in ("seed002-oasis", "seed004-hipmri"))
    for flag in (False, True):
        model = _model(dead_code_restart=flag)
        assert model.net.quantize_t.dead_code_restart is flag and model.net.quantize_b.dead_code_restart is flag


def test_training_reduces_reconstruction_error() -> None:
    model = _model()
    images = _smooth_images(32)
    initial = F.mse_loss(model.reconstruct(images, "image"), images).item()
    (stage,) = model.stages()
    optimizer = torch.optim.Adam(stage.parameters(), lr=stage.optimizer.lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = images[torch.randint(len(images), (stage.batch_size,), generator=g)]
        optimizer.zero_grad()
        stage.loss({"image": batch})["loss"].backward()
        optimizer.step()
    final = F.mse_loss(model.reconstruct(images, "image"), images).item()
    assert final < 0.5 * initial, (initial, final)


def test_state_dict_round_trip() -> None:
    overrides = {"hidden": 16, "res_hidden": 8, "n_res_layers": 1, "embedding_dim": 8, "n_embeddings": 32}
    model = _model(config="seed002-oasis", **overrides)  # batch norm: running statistics are state too
    images = _smooth_images(8)
    for _ in range(2):  # move the EMA codebooks and the batch-norm statistics away from their init
        model(images)
    copy = _model(seed=1, config="seed002-oasis", **overrides)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.reconstruct(images, "image"), model.reconstruct(images, "image"))


def test_incompatibility_reasons() -> None:
    assert VQVAE2.incompatibility(_spec((256, 128))) is None
    assert VQVAE2.incompatibility(_spec((64, 64))) is None
    assert VQVAE2.incompatibility(_spec((16, 16, 16), dims=3)) == "vqvae2 is 2D; dataset is 3D"
    reason = VQVAE2.incompatibility(_spec(modalities=("A", "B")))
    assert reason == "vqvae2 models single-modality data; dataset is paired (A, B)"
    reason = VQVAE2.incompatibility(_spec((30, 32)))
    assert reason == "spatial shape (30, 32) must be divisible by 4 (bottom and top downsampling)"
    # Given the resolved config, its downsampling: seed 004's stride-4 bottom needs multiples of 8.
    reason = VQVAE2.incompatibility(_spec((36, 36)), VQVAE2.configs["seed004-hipmri"])
    assert reason == "spatial shape (36, 36) must be divisible by 8 (bottom and top downsampling)"
    assert VQVAE2.incompatibility(_spec((36, 36)), VQVAE2.configs["seed002-oasis"]) is None
    with pytest.raises(BenchError, match="unknown layers"):
        _model(layers="vqgan")


@pytest.mark.parametrize("config", sorted(VQVAE2.configs))
def test_configs_reject_unknown_keys(config: str) -> None:
    with pytest.raises(BenchError, match="unknown config key 'hiden'"):
        merge_config(VQVAE2.configs[config], {"hiden": 64})


def test_evaluation_metrics_per_level() -> None:
    model = _model()
    images = _smooth_images(8)
    metrics = model.evaluation_metrics([{"image": images[:4]}, {"image": images[4:]}])
    n = VQVAE2.configs["tiny"]["n_embeddings"]
    assert set(metrics) == {
        f"{lvl}.{k}" for lvl in ("top", "bottom") for k in ("codebook_usage", "perplexity", "dead_codes")
    }
    for level in ("top", "bottom"):
        assert 0.0 < metrics[f"{level}.codebook_usage"] <= 1.0
        assert 1.0 <= metrics[f"{level}.perplexity"] <= n
        assert metrics[f"{level}.dead_codes"] == round(n * (1 - metrics[f"{level}.codebook_usage"]))


def test_channels_last_only_touches_cuda_inputs() -> None:
    model = _model(channels_last=True)
    x = _smooth_images(2)
    assert to_memory_format(model.net, x, True) is x  # CPU: left alone
    assert model.net.enc_b[0].weight.is_contiguous()
    assert model.reconstruct(x, "image").shape == x.shape


def test_conformance_kit() -> None:
    check_model_plugin(VQVAE2, config="tiny")
