"""Tests of the ``pixelcnn`` model plugin and the gated PixelCNN layers in ``pixelcnn_layers``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench_core.api import API_VERSION, RECONSTRUCT, SAMPLE, BenchError, DataSpec, ModelPlugin, merge_config
from bench_core.testing import check_model_plugin
from bench_core.trainer import TrainSettings, run_stage
from bench_plugins.models.pixelcnn import PixelCNNVQVAE2, bench_models
from bench_plugins.models.pixelcnn_layers import BottomPrior, GatedPixelConv, TopPrior, draw


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


# Smaller than ``tiny`` so the tests stay fast; 32x32 inputs give a 4x4 top and an 8x8 bottom grid.
_SMALL = {"prior_channels": 16, "top_layers": 3, "top_attention": 1, "bottom_layers": 3, "n_embeddings": 32}


def _model(shape: tuple[int, int] = (32, 32), seed: int = 0, config: str = "tiny", **overrides) -> PixelCNNVQVAE2:
    torch.manual_seed(seed)
    return PixelCNNVQVAE2(merge_config(PixelCNNVQVAE2.configs[config], overrides), _spec(shape))


def _smooth_images(n: int, shape: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    """Blurred noise scaled to [-1, 1]: smooth structure a small VQ-VAE learns quickly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *shape, generator=g)
    for _ in range(3):
        x = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (x - lo) / (hi - lo) - 1


def _causality_violations(logits_fn: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor, n_codes: int):
    """Change the code at every position in turn; list where logits at or before it moved.

    Returns ``(violations, unaffected)``: positions ``(p, q)`` with ``q <= p`` in raster order
    whose logits changed when code ``p`` changed, and positions ``p`` whose change moved no
    later logit at all (a network that ignores its inputs would pass the first check).
    """
    height, width = codes.shape[-2:]
    with torch.no_grad():
        base = logits_fn(codes).flatten(2)
        violations, unaffected = [], []
        for p in range(height * width):
            changed = codes.clone().flatten(1)
            changed[:, p] = (changed[:, p] + 1) % n_codes
            moved = (logits_fn(changed.view_as(codes)).flatten(2) != base).any(dim=(0, 1))
            violations += [(p, q) for q in range(p + 1) if moved[q]]
            if p + 1 < height * width and not moved[p + 1 :].any():
                unaffected.append(p)
    return violations, unaffected


def test_plugin_contract() -> None:
    assert bench_models() == [PixelCNNVQVAE2]
    assert PixelCNNVQVAE2.api_version == API_VERSION
    assert PixelCNNVQVAE2.capabilities == {RECONSTRUCT, SAMPLE}
    model = _model(**_SMALL)
    assert isinstance(model, ModelPlugin)
    vqvae, top, bottom = model.stages()
    cfg = PixelCNNVQVAE2.configs["tiny"]
    assert [s.name for s in (vqvae, top, bottom)] == ["vqvae", "top_prior", "bottom_prior"]
    assert vqvae.frozen is None and set(vqvae.parameters()) == set(model.vqvae.parameters())
    assert (vqvae.optimizer.lr, vqvae.batch_size) == (cfg["lr"], cfg["batch_size"])
    for stage, prior in ((top, model.top_prior), (bottom, model.bottom_prior)):
        assert stage.frozen() == [model.vqvae]
        assert set(stage.parameters()) == set(prior.parameters())
        assert (stage.optimizer.lr, stage.batch_size, stage.default_steps) == (
            cfg["prior_lr"],
            cfg["prior_batch_size"],
            cfg["prior_steps"],
        )
        out = stage.loss({"image": _smooth_images(2), "id": ["a", "b"]})
        assert out["loss"].requires_grad and not out["bits_per_code"].requires_grad
        torch.testing.assert_close(out["bits_per_code"], out["loss"].detach() / math.log(2))
        # An untrained prior is close to uniform over the codebook.
        assert abs(out["bits_per_code"].item() - math.log2(_SMALL["n_embeddings"])) < 1.5


def test_seed002_prior_sizes() -> None:
    cfg = PixelCNNVQVAE2.configs["seed002-oasis"]
    assert (cfg["prior_channels"], cfg["top_layers"], cfg["top_attention"], cfg["attention_heads"]) == (128, 20, 4, 2)
    assert (cfg["bottom_layers"], cfg["cond_res"], cfg["prior_lr"], cfg["prior_batch_size"]) == (20, 9, 1e-4, 64)
    prior = TopPrior(8, 8, cfg["top_layers"], cfg["top_attention"], 2, 1)
    # Layout A+4B, attn, 5B, attn, 5B, attn, 5B, attn.
    layout = "".join(type(m).__name__[0] for m in prior.layers).replace("G", "g").replace("P", "|")
    assert layout == "ggggg|ggggg|ggggg|ggggg|"
    assert [m.kind for m in prior.layers if isinstance(m, GatedPixelConv)] == ["A"] + ["B"] * 19


@pytest.mark.parametrize(("config", "shape"), [("seed002-oasis", (64, 64)), ("seed002-oasis", (256, 128))])
def test_source_grids(config: str, shape: tuple[int, int]) -> None:
    cfg = PixelCNNVQVAE2.configs[config]
    overrides = {"prior_channels": 8, "top_layers": 2, "top_attention": 1, "bottom_layers": 2, "cond_res": 1}
    model = PixelCNNVQVAE2(merge_config(cfg, overrides), _spec(shape))
    top, bottom = ((16, 16), (32, 32)) if shape == (64, 64) else ((64, 32), (128, 64))
    assert (model.top_shape, model.bottom_shape) == (top, bottom)
    codes_t, codes_b = model.codes(torch.rand(1, 1, *shape) * 2 - 1)
    assert (codes_t.shape, codes_b.shape) == ((1, *top), (1, *bottom))
    with torch.no_grad():
        assert model.top_prior(codes_t).shape == (1, cfg["n_embeddings"], *top)
        assert model.bottom_prior(codes_b, codes_t).shape == (1, cfg["n_embeddings"], *bottom)


def test_top_prior_is_causal_in_raster_order() -> None:
    torch.manual_seed(0)
    prior = TopPrior(n_codes=6, channels=8, n_layers=4, n_attention=2, heads=2, n_out_res=1).eval()
    codes = torch.randint(6, (2, 4, 5))
    violations, unaffected = _causality_violations(prior, codes, 6)
    assert violations == []
    assert unaffected == []  # and every code does inform later positions


def test_bottom_prior_is_causal_and_uses_the_top_codes() -> None:
    torch.manual_seed(0)
    prior = BottomPrior(n_codes=6, channels=8, n_layers=4, n_cond_res=1).eval()
    codes_t = torch.randint(6, (2, 3, 3))
    codes_b = torch.randint(6, (2, 6, 6))
    violations, unaffected = _causality_violations(lambda c: prior(c, codes_t), codes_b, 6)
    assert violations == [] and unaffected == []
    # The conditioning may look anywhere in the (known) top grid: changing one top code moves the logits.
    with torch.no_grad():
        other_t = codes_t.clone()
        other_t[:, 2, 2] = (other_t[:, 2, 2] + 1) % 6
        assert not torch.equal(prior(codes_b, codes_t), prior(codes_b, other_t))


def test_causality_check_catches_a_leaky_network() -> None:
    torch.manual_seed(0)
    prior = TopPrior(n_codes=6, channels=8, n_layers=2, n_attention=0, heads=1, n_out_res=1).eval()
    prior.layers[0] = GatedPixelConv(8, "B")  # a B layer first sees the current code: a leak
    violations, _ = _causality_violations(prior, torch.randint(6, (1, 3, 4)), 6)
    assert {(p, p) for p in range(12)} <= set(violations)


def test_priors_on_cropped_rows_match_the_full_grid() -> None:
    torch.manual_seed(0)
    top = TopPrior(n_codes=6, channels=8, n_layers=3, n_attention=1, heads=2, n_out_res=1).eval()
    bottom = BottomPrior(n_codes=6, channels=8, n_layers=3, n_cond_res=1).eval()
    codes_t, codes_b = torch.randint(6, (2, 4, 4)), torch.randint(6, (2, 8, 8))
    with torch.no_grad():
        full_t, cond = top(codes_t), bottom.condition(codes_t)
        full_b = bottom.logits(codes_b, cond)
        for rows in (1, 3):
            torch.testing.assert_close(top(codes_t[:, :rows]), full_t[:, :, :rows], rtol=0, atol=1e-6)
            cropped = bottom.logits(codes_b[:, :rows], cond[:, :, :rows])
            torch.testing.assert_close(cropped, full_b[:, :, :rows], rtol=0, atol=1e-6)


def test_cropped_sampling_equals_full_recomputation() -> None:
    model = _model(**_SMALL)
    # Sharpen the untrained priors' logits so the draws are not near-uniform (a stronger comparison).
    with torch.no_grad():
        model.top_prior.head[-1].weight.mul_(20)
        model.bottom_prior.head[-1].weight.mul_(20)
    cropped = model.sample_codes(3, 1.0, torch.Generator().manual_seed(1), crop_rows=True)
    full = model.sample_codes(3, 1.0, torch.Generator().manual_seed(1), crop_rows=False)
    assert all(torch.equal(a, b) for a, b in zip(cropped, full, strict=True))
    other = model.sample_codes(3, 1.0, torch.Generator().manual_seed(2))
    assert not torch.equal(cropped[1], other[1])
    # Temperature 0 is argmax: deterministic, whatever the generator.
    greedy = model.sample_codes(2, 0.0, torch.Generator().manual_seed(1))
    again = model.sample_codes(2, 0.0, torch.Generator().manual_seed(5), crop_rows=False)
    assert all(torch.equal(a, b) for a, b in zip(greedy, again, strict=True))
    assert torch.equal(greedy[0][0], greedy[0][1])
    images = model.sample(2, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()


def test_draw_temperature() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]]).repeat(4000, 1)
    assert torch.equal(draw(logits, 0.0, None), torch.ones(4000, dtype=torch.long))
    hot = draw(logits, 1.0, torch.Generator().manual_seed(0))
    cold = draw(logits, 0.25, torch.Generator().manual_seed(0))
    share = torch.softmax(logits[0], 0)[1].item()
    assert abs((hot == 1).float().mean().item() - share) < 0.03
    assert (cold == 1).float().mean() > 0.9


class _Items(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "id": f"item{i}"}


def test_stages_through_the_engine_train_priors_and_keep_the_vqvae_frozen(tmp_path: Path) -> None:
    model = _model(**{**_SMALL, "prior_lr": 1e-2})
    images = _smooth_images(32)
    data = _Items(images)
    vqvae_stage, top_stage, bottom_stage = model.stages()
    settings = TrainSettings(device=torch.device("cpu"), progress=False, steps=20, batch_size=8)
    run_stage(model, vqvae_stage, data, settings, tmp_path / "vqvae.pt")
    frozen = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    loader = [{"image": images[:16]}, {"image": images[16:]}]
    before = model.evaluation_metrics(loader)
    run_stage(model, top_stage, data, settings, tmp_path / "top.pt")
    run_stage(model, bottom_stage, data, settings, tmp_path / "bottom.pt")
    after = model.evaluation_metrics(loader)
    assert all(torch.equal(frozen[k], v) for k, v in model.vqvae.state_dict().items())
    assert all(p.requires_grad for p in model.vqvae.parameters())  # the engine restores the flags
    for level in ("top", "bottom"):
        assert after[f"{level}.bits_per_code"] < before[f"{level}.bits_per_code"] - 0.5, (before, after)
        assert after[f"{level}.codebook_usage"] == before[f"{level}.codebook_usage"]


def test_evaluation_metrics_keys() -> None:
    model = _model(**_SMALL)
    metrics = model.evaluation_metrics([{"image": _smooth_images(4)}])
    keys = ("codebook_usage", "perplexity", "dead_codes", "bits_per_code")
    assert set(metrics) == {f"{level}.{k}" for level in ("top", "bottom") for k in keys}
    assert all(
        0 < metrics[f"{level}.bits_per_code"] < 2 * math.log2(_SMALL["n_embeddings"]) for level in ("top", "bottom")
    )


def test_state_dict_round_trip() -> None:
    model = _model(**_SMALL)
    images = _smooth_images(4)
    model.vqvae(images)  # move the EMA codebooks away from their init
    copy = _model(seed=1, **_SMALL)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.reconstruct(images, "image"), model.reconstruct(images, "image"))
    samples = [m.sample(2, generator=torch.Generator().manual_seed(0)) for m in (model, copy)]
    assert torch.equal(*samples)


def test_incompatibility_reasons() -> None:
    assert PixelCNNVQVAE2.incompatibility(_spec((64, 64))) is None
    assert PixelCNNVQVAE2.incompatibility(_spec((16, 16, 16), dims=3)) == "pixelcnn is 2D; dataset is 3D"
    reason = PixelCNNVQVAE2.incompatibility(_spec(modalities=("A", "B")))
    assert reason == "pixelcnn models single-modality data; dataset is paired (A, B)"
    assert "must be divisible by 4" in PixelCNNVQVAE2.incompatibility(_spec((30, 30)))
    reason = PixelCNNVQVAE2.incompatibility(_spec((36, 36)), PixelCNNVQVAE2.configs["tiny"])  # a stride-4 bottom
    assert reason == "spatial shape (36, 36) must be divisible by 8 (bottom and top downsampling)"
    with pytest.raises(BenchError, match="attention layers"):
        _model(top_layers=2, top_attention=3)


def test_conformance_kit() -> None:
    check_model_plugin(PixelCNNVQVAE2, config="tiny")
