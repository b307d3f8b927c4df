"""Tests of the ``vqvae`` model plugin and its building blocks in ``vq_layers``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bench_core.api import API_VERSION, RECONSTRUCT, BenchError, DataSpec, ModelPlugin, merge_config
from bench_plugins.models.vq_layers import CodeUsage, VectorQuantizer, VectorQuantizerEMA
from bench_plugins.models.vqvae import VQVAE, bench_models


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: extra intra-op threads gain nothing and, spin-waiting on a busy
    # 2-core machine, made single tests swing from 1 s to 30 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(shape: tuple[int, ...] = (32, 32), modalities: tuple[str, ...] = ("image",), dims: int = 2) -> DataSpec:
    return DataSpec(modalities, (1,) * len(modalities), dims, shape, (0.0, 1.0))


def _model(shape: tuple[int, ...] = (32, 32), seed: int = 0, **overrides) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(merge_config(VQVAE.configs["tiny"], overrides), _spec(shape))


def _smooth_images(n: int, shape: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    """Blurred noise scaled to [0, 1]: smooth structure a small VQ-VAE can learn quickly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *shape, generator=g)
    for _ in range(3):
        x = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


def test_plugin_contract() -> None:
    assert bench_models() == [VQVAE]
    assert VQVAE.api_version == API_VERSION
    assert VQVAE.capabilities == {RECONSTRUCT}
    model = _model()
    assert isinstance(model, ModelPlugin)
    (stage,) = model.stages()
    cfg = VQVAE.configs["tiny"]
    assert (stage.name, stage.optimizer.name, stage.optimizer.lr) == ("vqvae", "adam", cfg["lr"])
    assert (stage.batch_size, stage.default_steps, stage.grad_clip) == (cfg["batch_size"], cfg["steps"], None)
    assert set(stage.parameters()) == set(model.parameters())
    out = stage.loss({"image": _smooth_images(2), "id": ["a", "b"]})
    assert {"loss", "recon", "commit", "perplexity"} <= set(out)
    assert out["loss"].requires_grad and not out["perplexity"].requires_grad


@pytest.mark.parametrize(
    ("config", "shape"),
    [("seed003-hipmri", (256, 128)), ("tiny", (64, 32)), ("seed003-hipmri", (64, 32))],
)
def test_shapes(config: str, shape: tuple[int, int]) -> None:
    cfg = VQVAE.configs[config]
    model = VQVAE(cfg, _spec(shape))
    x = torch.rand(2, 1, *shape)
    x_hat, q = model(x)
    latent = tuple(s // 2 ** cfg["n_down"] for s in shape)
    assert x_hat.shape == x.shape
    assert q.indices.shape == (2, *latent)
    assert q.quantized.shape == (2, cfg["embedding_dim"], *latent)
    assert model.decode_codes(q.indices).shape == x.shape
    assert model.reconstruct(x, "image").shape == x.shape


@pytest.mark.parametrize("quantizer", ["ema", "codebook_loss"])
def test_straight_through_gradient_reaches_encoder(quantizer: str) -> None:
    model = _model(quantizer=quantizer)
    x = _smooth_images(4)
    x_hat, _ = model(x)
    F.mse_loss(x_hat, x).backward()  # reconstruction only: its gradient must cross the quantiser
    first_conv = model.encoder[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    if quantizer == "codebook_loss":
        model.zero_grad()
        model.loss({"image": x})["loss"].backward()
        assert model.quantizer.codebook.grad.abs().sum() > 0


def test_ema_codebook_moves_only_in_training_mode() -> None:
    model = _model()
    x = _smooth_images(4)
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}

    def unchanged() -> bool:
        return all(torch.equal(before[k], v) for k, v in model.quantizer.state_dict().items())

    model.eval()
    with torch.no_grad():
        model(x)
    assert unchanged()
    # The evaluation paths switch to eval mode themselves, even on a model left in training mode.
    model.train()
    model.reconstruct(x, "image")
    model.evaluation_metrics([{"image": x}])
    assert unchanged() and model.training
    model(x)
    assert not torch.equal(before["codebook"], model.quantizer.codebook)
    assert not torch.equal(before["cluster_size"], model.quantizer.cluster_size)


@pytest.mark.parametrize("cls", [VectorQuantizerEMA, VectorQuantizer])
def test_nearest_code_matches_brute_force(cls: type) -> None:
    torch.manual_seed(0)
    quantizer = cls(dim=8, n_embeddings=32).eval()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.randn(32, 8))  # well-separated codes: no near-ties
    z = torch.randn(3, 8, 5, 7)
    out = quantizer(z)
    flat = z.movedim(1, -1).reshape(-1, 8)
    expected = torch.cdist(flat, quantizer.codebook.detach()).argmin(1).view(3, 5, 7)
    assert torch.equal(out.indices, expected)
    torch.testing.assert_close(out.quantized, quantizer.codebook.detach()[expected].movedim(-1, 1))
    torch.testing.assert_close(out.commitment, F.mse_loss(z, out.quantized))


@pytest.mark.parametrize("quantizer", ["ema", "codebook_loss"])
def test_training_loop_reduces_reconstruction_error(quantizer: str) -> None:
    model = _model(quantizer=quantizer)
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
    model = _model(batch_norm=True)
    images = _smooth_images(8)
    for _ in range(2):  # move the EMA codebook and the batch-norm statistics away from their init
        model(images)
    copy = _model(seed=1, batch_norm=True)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.reconstruct(images, "image"), model.reconstruct(images, "image"))


def test_incompatibility_reasons() -> None:
    assert VQVAE.incompatibility(_spec((256, 128))) is None
    assert VQVAE.incompatibility(_spec((16, 16, 16), dims=3)) == "vqvae is 2D; dataset is 3D"
    reason = VQVAE.incompatibility(_spec(modalities=("A", "B")))
    assert reason == "vqvae reconstructs single-modality data; dataset is paired (A, B)"
    reason = VQVAE.incompatibility(_spec((7, 9)))
    assert reason == "spatial shape (7, 9) must be divisible by 4 (2 downsamplings)"
    # Given the resolved config, its downsampling count, which may exceed the default's.
    config = merge_config(VQVAE.configs["tiny"], {"n_down": 3})
    reason = VQVAE.incompatibility(_spec((36, 36)), config)
    assert reason == "spatial shape (36, 36) must be divisible by 8 (3 downsamplings)"
    with pytest.raises(BenchError, match="unknown quantizer"):
        _model(quantizer="gumbel")


@pytest.mark.parametrize("config", sorted(VQVAE.configs))
def test_configs_reject_unknown_keys(config: str) -> None:
    with pytest.raises(BenchError, match="unknown config key 'hiden'"):
        merge_config(VQVAE.configs[config], {"hiden": 64})
    assert merge_config(VQVAE.configs[config], {"hidden": 64})["hidden"] == 64


@pytest.mark.parametrize("cls", [VectorQuantizerEMA, VectorQuantizer])
def test_dead_code_restart_reseeds_unused_codes(cls: type) -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    rows = z.movedim(1, -1).reshape(-1, 4)
    for restart in (False, True):
        quantizer = cls(dim=4, n_embeddings=16, dead_code_restart=restart)
        with torch.no_grad():
            quantizer.codebook[1:] = 100.0  # only code 0 can win: codes 1..15 are dead
        quantizer(z)
        # Distance of each dead code to the nearest encoder output of the batch.
        gap = torch.cdist(quantizer.codebook.detach()[1:], rows).amin(1)
        if restart:
            assert (gap < 1e-5).all()
            assert (quantizer.cluster_size >= quantizer.dead_code_threshold).all()
        else:
            assert (gap > 1.0).all()


def test_evaluation_metrics_ranges() -> None:
    model = _model()
    images = _smooth_images(8)
    metrics = model.evaluation_metrics([{"image": images[:4]}, {"image": images[4:]}])
    n = model.quantizer.n_embeddings
    assert set(metrics) == {"codebook_usage", "perplexity", "dead_codes"}
    assert 0.0 <= metrics["codebook_usage"] <= 1.0
    assert 1.0 <= metrics["perplexity"] <= n
    assert metrics["dead_codes"] == int(metrics["dead_codes"])
    assert metrics["dead_codes"] == round(n * (1 - metrics["codebook_usage"]))


def test_code_usage_summary() -> None:
    usage = CodeUsage(4)
    usage.update(torch.tensor([[0, 0], [1, 1]]))
    assert usage.summary() == pytest.approx({"codebook_usage": 0.5, "perplexity": 2.0, "dead_codes": 2.0})


def test_ema_statistics_all_reduced_under_distributed(tmp_path) -> None:
    """With a (single-rank) process group the all-reduce path runs and keeps the same result."""
    z = torch.randn(2, 4, 3, 3)
    plain = VectorQuantizerEMA(4, 8, dead_code_restart=True)
    reduced = VectorQuantizerEMA(4, 8, dead_code_restart=True)
    reduced.load_state_dict(plain.state_dict())
    torch.manual_seed(0)
    plain(z)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        reduced(z)
    finally:
        dist.destroy_process_group()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(reduced.state_dict()[key], value)
