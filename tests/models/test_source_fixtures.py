"""The models against their sources: reference fixtures made by running the original research code.

Each fixture folder (``../shared/fixtures/source-checkpoints``, or ``$BENCH_SOURCE_FIXTURES``)
holds a checkpoint exactly as the source's training script saves it, inputs, and the source
code's outputs on them (``fixture.json`` says how each was computed). Every test here loads
the source checkpoint through the converter (``bench_core.convert``: the path of a suite's
``load:`` and of ``bench convert``), runs the inputs and compares with the source's outputs:
max abs difference at most 1e-5 in float32 (codebooks, which hold entries of order 1e5 for
unused codes, relative to their largest entry), the achieved figure in every failure message.

Without the fixture folder the tests skip, saying why; in CI (``CI=true``) it is always
present, so there a missing folder fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench_core.api import BenchError, DataSpec, merge_config
from bench_core.checkpoints import CheckpointError, load_weights
from bench_core.cli import main as bench_main
from bench_core.convert import convert_files, read_torch_file
from bench_plugins.models.phvae import PHVAE
from bench_plugins.models.pixelcnn import PixelCNNVQVAE2
from bench_plugins.models.pixelcnn_layers import BottomPrior, TopPrior
from bench_plugins.models.vdvae3d import VDVAE3D
from bench_plugins.models.vdvae3d_layers import GaussianHead
from bench_plugins.models.vq2_layers import VQVAE2Net
from bench_plugins.models.vq_layers import VectorQuantizerEMA
from bench_plugins.models.vqvae2 import VQVAE2

ATOL = 1e-5
PROJECT = Path(__file__).resolve().parents[2]


def _fixture_root() -> Path:
    return Path(os.environ.get("BENCH_SOURCE_FIXTURES") or PROJECT.parent / "shared/fixtures/source-checkpoints")


ROOT = _fixture_root()

if not ROOT.is_dir():
    reason = f"source-checkpoint fixtures not found at {ROOT} (set BENCH_SOURCE_FIXTURES to their folder)"
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{reason}; CI always has them, so this is a failure")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = ATOL, relative: bool = False) -> float:
    """Assert ``max |got - want| <= atol`` (relative to ``max |want|`` with ``relative``); return the figure."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, source {tuple(want.shape)}"
    diff = (got.detach().double() - want.double()).abs().max().item() if want.numel() else 0.0
    if relative:
        diff /= max(want.double().abs().max().item(), 1e-30)
    kind = "relative max |diff|" if relative else "max |diff|"
    assert diff <= atol, f"{name}: {kind} {diff:.3g} > {atol:g} against the source's output"
    return diff


def _same_codes(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    mismatches = int((got != want).sum())
    assert mismatches == 0, f"{name}: {mismatches} of {want.numel()} codes differ from the source's"


@cache
def _files(folder: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    path = ROOT / folder
    return (
        load_file(str(path / "inputs.safetensors")),
        load_file(str(path / "expected.safetensors")),
        json.loads((path / "fixture.json").read_text()),
    )


# -- phvae ----------------------------------------------------------------------------------------

PHVAE_VARIANTS = ["mri-ct-nll", "mri-ct-mae", "ndvi-rgb-nll", "ndvi-rgb-mae"]
# The fixtures' small architecture (fixture.json upstream_config.argfile).
PHVAE_SMALL = {"width": 12, "n_resolutions": 5, "blocks_per_resolution": 2, "zdim": 6}
ROUTES = {"A2A": (0, 0), "B2B": (1, 1), "B2A": (1, 0), "A2B": (0, 1)}


def _phvae(variant: str) -> PHVAE:
    path = ROOT / "phvae" / variant / "checkpoint.pt"
    config = merge_config(PHVAE.configs[variant], PHVAE_SMALL)
    model = PHVAE(config, PHVAE.source_spec([read_torch_file(path)], config))
    assert load_weights(model, path, "source") == "source"
    return model.eval()


@pytest.mark.parametrize("variant", PHVAE_VARIANTS)
def test_phvae_matches_source(variant: str) -> None:
    inputs, expected, _ = _files(f"phvae/{variant}")
    model = _phvae(variant)
    rec = "nll" if model.config["head"] == "dmol" else "mae"
    xs = [inputs["x1"], inputs["x2"]]
    with torch.no_grad():
        units = [model._to_unit(x) for x in xs]
        acts = [branch.encoder(u) for branch, u in zip(model.branches, units, strict=True)]
        for i, m in enumerate("AB"):
            for size, act in acts[i].items():
                _close(f"enc_{m}_r{size}", act, expected[f"enc_{m}_r{size}"])
        for k, (route, (s, t)) in enumerate(ROUTES.items()):
            branch = model.branches[t]
            params, kls = branch.decoder(acts[s], translate=s != t, temperature=0.0)
            image = model._from_unit(branch.decoder.head.sample(params, 0.0))
            _close(f"det_out_{route}", image, expected[f"det_out_{route}"])
            _close(
                f"det_kl_{route}", sum(kl.sum((1, 2, 3)) for kl in kls) / xs[t][0].numel(), expected[f"det_kl_{route}"]
            )
            _close(f"det_{rec}_{route}", branch.recon_term(params, units[t]), expected[f"det_{rec}_{route}"])
            # Posterior sampling at temperature 1: one randn per block, seeded right before the decode.
            torch.manual_seed(100 + k)
            params, kls = branch.decoder(acts[s], translate=s != t, temperature=1.0)
            _close(
                f"sto_kl_{route}", sum(kl.sum((1, 2, 3)) for kl in kls) / xs[t][0].numel(), expected[f"sto_kl_{route}"]
            )
            _close(f"sto_{rec}_{route}", branch.recon_term(params, units[t]), expected[f"sto_{rec}_{route}"])
        # The training forward (A2A, B2B, B2A, A2B after torch.manual_seed(200)). The DMOL source also
        # draws output samples between routes, so only its first route's terms are comparable.
        torch.manual_seed(200)
        terms = model.terms(units, translate=True)
        names = {"x1": "A", "x2": "B", "x1t": "B2A", "x2t": "A2B"}
        for upstream, ours in names.items() if rec == "mae" else [("x1", "A")]:
            _close(f"train_kll_{upstream}", terms[f"kl_{ours}"], expected[f"train_kll_{upstream}"])
            _close(f"train_{rec}_{upstream}", terms[f"rec_{ours}"], expected[f"train_{rec}_{upstream}"])
        if rec == "mae":
            _close("train_loss", sum(terms.values()), expected["train_loss"])
            for m, branch in zip("AB", model.branches, strict=True):  # prior decodes at temperature 0
                params = branch.decoder.sample(expected[f"prior_t0_{m}"].shape[0], 0.0)
                _close(
                    f"prior_t0_{m}",
                    model._from_unit(branch.decoder.head.sample(params, 0.0)),
                    expected[f"prior_t0_{m}"],
                )


def test_phvae_config_mismatch_names_the_key() -> None:
    path = ROOT / "phvae" / "mri-ct-nll" / "checkpoint.pt"
    config = merge_config(PHVAE.configs["mri-ct-nll"], {**PHVAE_SMALL, "width": 16})
    with pytest.raises(BenchError, match="width 12, the config 16: set width=12"):
        PHVAE.from_source([read_torch_file(path)], config)


# -- vdvae3d --------------------------------------------------------------------------------------

VDVAE3D_SMALL = {
    "channels": [8, 8, 12, 12, 16],
    "latents_per_channel": [2, 3, 2, 2, 1],
    "channels_per_latent": [3, 4, 4, 4, 40],
    "kernel_sizes_bottom_up": [3, 3, 3, 2, 1],
    "kernel_sizes_top_down": [3, 3, 3, 2, 1],
}


def test_vdvae3d_matches_source() -> None:
    inputs, expected, _ = _files("vdvae3d")
    path = ROOT / "vdvae3d" / "checkpoint.pt"
    config = merge_config(VDVAE3D.configs["32"], VDVAE3D_SMALL)
    model = VDVAE3D(config, VDVAE3D.source_spec([read_torch_file(path)], config))
    assert load_weights(model, path) == "source"  # detected from the keys
    model.eval()
    x = inputs["x"]
    assert sum(p.numel() for p in model.parameters()) == 162082
    with torch.no_grad():
        for mode, temperature in (("det", 0.0), ("sto", 1.0)):
            torch.manual_seed(11)  # the source's only draws: one randn per latent layer, coarsest first
            mean, std, kls = model(x, temperature)
            kl = torch.stack(kls)
            nll = GaussianHead.nll(mean, std, x)
            _close(f"{mode}_x_mu", mean, expected[f"{mode}_x_mu"])
            _close(f"{mode}_x_std", std, expected[f"{mode}_x_std"])
            _close(f"{mode}_kl_layers", kl, expected[f"{mode}_kl_layers"])
            _close(f"{mode}_kl", kl.sum(0), expected[f"{mode}_kl"])
            _close(f"{mode}_nll", nll, expected[f"{mode}_nll"])
            _close(f"{mode}_neg_elbo", nll + kl.sum(0), expected[f"{mode}_neg_elbo"])
            _close(f"{mode}_mse", (mean - x).pow(2).flatten(1).mean(1), expected[f"{mode}_mse"])
            l2 = config["l2_reg_coeff"] * model.l2_penalty()
            _close(f"{mode}_l2", l2.reshape(1), expected[f"{mode}_l2"])
            _close(f"{mode}_loss", ((nll + kl.sum(0)).mean() + l2).reshape(1), expected[f"{mode}_loss"], relative=True)


# -- vqvae2 ---------------------------------------------------------------------------------------

VQ_SEED004_SMALL = {"hidden": 16, "res_hidden": 8, "n_res_layers": 2, "embedding_dim": 8, "n_embeddings": 64}
VQ_SEED002_SMALL = {"hidden": 16, "res_hidden": 8, "n_res_layers": 2, "embedding_dim": 8, "n_embeddings": 512}
PRIOR_SMALL = {"prior_channels": 16}  # depth 16, 2 heads; the layer counts are the source's


def _vqvae2(config_name: str, overrides: dict[str, Any], folder: str, shape: tuple[int, int]) -> VQVAE2:
    config = merge_config(VQVAE2.configs[config_name], overrides)
    model = VQVAE2(config, DataSpec(("image",), (1,), 2, shape, (-1.0, 1.0)))
    assert load_weights(model, ROOT / folder / "checkpoint.pt", "source") == "source"
    return model.eval()


def _quantiser_sequence(expected: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], n: int) -> None:
    """The stand-alone quantiser fixture: buffers from the source's init, two training calls, one eval call."""
    q = VectorQuantizerEMA(8, n)
    q.codebook.copy_(inputs["quant_embed_init"].t())
    q.cluster_size.copy_(inputs["quant_cluster_size_init"])
    q.embed_avg.copy_(inputs["quant_embed_avg_init"].t())
    for i in (1, 2, 3):
        q.train(i < 3)
        with torch.no_grad():
            out = q(inputs[f"quant_z{i}"].permute(0, 3, 1, 2))
        _close(f"quant{i}_out", out.quantized.permute(0, 2, 3, 1), expected[f"quant{i}_out"])
        _close(f"quant{i}_diff", out.commitment.reshape(1), expected[f"quant{i}_diff"])
        _same_codes(f"quant{i}_ind", out.indices, expected[f"quant{i}_ind"])
        _close(f"quant{i}_embed", q.codebook.t(), expected[f"quant{i}_embed"], relative=True)
        _close(f"quant{i}_cluster_size", q.cluster_size, expected[f"quant{i}_cluster_size"])
        _close(f"quant{i}_embed_avg", q.embed_avg.t(), expected[f"quant{i}_embed_avg"])


def _vq_outputs(model: VQVAE2, x: torch.Tensor, expected: dict[str, torch.Tensor], names: dict[str, str]) -> None:
    """Eval-mode outputs, then one training-mode forward (EMA update) and the codebooks after it."""
    with torch.no_grad():
        out = model(x)
        _close("recon", out.reconstruction, expected["recon"])
        _close("latent_loss", (out.top.commitment + out.bottom.commitment).reshape(1), expected["latent_loss"])
        _close(names["quant_t"], out.top.quantized, expected[names["quant_t"]])
        _close(names["quant_b"], out.bottom.quantized, expected[names["quant_b"]])
        _same_codes(names["codes_t"], out.top.indices, expected[names["codes_t"]])
        _same_codes(names["codes_b"], out.bottom.indices, expected[names["codes_b"]])
        decoded = model.decode_codes(expected[names["codes_t"]], expected[names["codes_b"]])
        _close(names["decode"], decoded, expected[names["decode"]])
        model.train()
        torch.manual_seed(names["seed"])  # seed 002: dropout draws in the source's call order
        out = model(x)
        latent = out.top.commitment + out.bottom.commitment
        _close("train_recon", out.reconstruction, expected["train_recon"])
        _close("train_latent_loss", latent.reshape(1), expected["train_latent_loss"])
        train_loss = F.mse_loss(out.reconstruction, x) + 0.25 * latent
        _close("train_loss", train_loss.reshape(1), expected["train_loss"])
    for level, quantiser in (("t", model.net.quantize_t), ("b", model.net.quantize_b)):
        suffix = names[level]
        _close(f"ema_embed_{suffix}", quantiser.codebook.t(), expected[f"ema_embed_{suffix}"], relative=True)
        _close(f"ema_cluster_size_{suffix}", quantiser.cluster_size, expected[f"ema_cluster_size_{suffix}"])
        _close(f"ema_embed_avg_{suffix}", quantiser.embed_avg.t(), expected[f"ema_embed_avg_{suffix}"])


def test_vqvae2_seed004_matches_source() -> None:
    inputs, expected, _ = _files("vqvae2-seed004")
    model = _vqvae2("seed004-hipmri", VQ_SEED004_SMALL, "vqvae2-seed004", (64, 32))
    names = {"quant_t": "quant_t", "quant_b": "quant_b", "codes_t": "codes_t", "codes_b": "codes_b"}
    _vq_outputs(model, inputs["x"], expected, {**names, "decode": "decode_code", "seed": 0, "t": "t", "b": "b"})
    _quantiser_sequence(expected, inputs, 64)


def test_vqvae2_seed002_matches_source() -> None:
    inputs, expected, _ = _files("vqvae2-seed002")
    model = _vqvae2("seed002-oasis", VQ_SEED002_SMALL, "vqvae2-seed002", (32, 32))
    names = {"quant_t": "quant_top", "quant_b": "quant_bottom", "codes_t": "codes_top", "codes_b": "codes_bottom"}
    _vq_outputs(model, inputs["x"], expected, {**names, "decode": "decode_codebook", "seed": 400, "t": "2", "b": "1"})
    _quantiser_sequence(expected, inputs, 512)


def _pixelcnn_small() -> dict[str, Any]:
    return merge_config(PixelCNNVQVAE2.configs["seed002-oasis"], {**VQ_SEED002_SMALL, **PRIOR_SMALL})


def test_pixelcnn_priors_match_source(tmp_path: Path) -> None:
    inputs, expected, _ = _files("vqvae2-seed002")
    folder = ROOT / "vqvae2-seed002"
    out = tmp_path / "pixelcnn.safetensors"
    # The files in another order than the source's: each is recognised by its keys.
    files = [folder / "checkpoint_bottom_prior.pt", folder / "checkpoint.pt", folder / "checkpoint_top_prior.pt"]
    summary = convert_files(PixelCNNVQVAE2, _pixelcnn_small(), files, out)
    assert (summary["tensors"], summary["parameters"]) == (142 + 315 + 336, 30385 + 237568 + 303568)
    model = PixelCNNVQVAE2(_pixelcnn_small(), DataSpec(("image",), (1,), 2, (32, 32), (-1.0, 1.0)))
    assert load_weights(model, out) == "ours"
    model.eval()
    with torch.no_grad():
        top = model.top_prior(inputs["codes_top"])
        _close("top_logits", top, expected["top_logits"])
        _close(
            "bottom_logits", model.bottom_prior(inputs["codes_bottom"], inputs["codes_top"]), expected["bottom_logits"]
        )
        codes_t, codes_b = model.codes(inputs["x"])
        _same_codes("codes_top", codes_t, expected["codes_top"])
        _same_codes("codes_bottom", codes_b, expected["codes_bottom"])
        nll_t = F.cross_entropy(model.top_prior(codes_t), codes_t, reduction="none")
        nll_b = F.cross_entropy(model.bottom_prior(codes_b, codes_t), codes_b, reduction="none")
        _close("vq_top_nll", nll_t, expected["vq_top_nll"])
        _close("vq_bottom_nll", nll_b, expected["vq_bottom_nll"])
        _close("vq_top_ce", nll_t.mean().reshape(1), expected["vq_top_ce"])
        _close("vq_bottom_ce", nll_b.mean().reshape(1), expected["vq_bottom_ce"])


def test_pixelcnn_prior_training_steps_match_source() -> None:
    """Three Adam steps (lr 1e-4) from the source's initial priors on its code maps give its losses and weights."""
    folder = ROOT / "vqvae2-seed002"
    batches = load_file(str(folder / "train_batches.safetensors"))
    expected = load_file(str(folder / "train_expected.safetensors"))
    for level, prior in (("top", TopPrior(512, 16, 20, 4, 2, 10)), ("bottom", BottomPrior(512, 16, 20, 9))):
        init = read_torch_file(folder / f"train_init_{level}_prior.pt")
        prior.load_state_dict(dict(zip(prior.state_dict(), init.values(), strict=True)))
        optimizer = torch.optim.Adam(prior.parameters(), lr=1e-4)
        losses = []
        for step in range(3):
            codes_t, codes_b = batches["prior_codes_top"][step], batches["prior_codes_bottom"][step]
            optimizer.zero_grad()
            if level == "top":
                loss = F.cross_entropy(prior(codes_t), codes_t)
            else:
                loss = F.cross_entropy(prior(codes_b, codes_t), codes_b)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        want = expected[f"{level}_prior_loss_ce"]
        _close(f"{level}_prior_loss_ce", torch.stack(losses) / want, torch.ones_like(want), atol=5e-5)
        final = read_torch_file(folder / f"checkpoint_{level}_prior.pt")
        for (key, ours), (name, theirs) in zip(prior.state_dict().items(), final.items(), strict=True):
            # Attention key biases have zero exact gradient: Adam turns rounding noise into steps of lr.
            tolerance = 6e-4 if "kqv_projection.bias" in name else 5e-5
            _close(f"{level} prior {name} after 3 steps ({key})", ours, theirs, atol=tolerance)


# -- exact structure and initial weights ----------------------------------------------------------


def test_pixelcnn_seed002_parameter_counts_are_the_sources() -> None:
    with torch.device("meta"):
        model = PixelCNNVQVAE2(
            PixelCNNVQVAE2.configs["seed002-oasis"], DataSpec(("image",), (1,), 2, (64, 64), (-1, 1))
        )
    counts = [sum(p.numel() for p in part.parameters()) for part in (model.top_prior, model.bottom_prior)]
    assert counts == [14_010_880, 17_721_472], counts  # TopPrior() and BottomPrior() at depth 128


def test_seed002_initial_weights_are_the_sources() -> None:
    """Under the source's seeds our modules start from the source's initial weights, bit for bit."""
    folder = ROOT / "vqvae2-seed002"
    config = _pixelcnn_small()
    torch.manual_seed(1)  # train_vqvae.py's run: the VQ-VAE is the first thing built
    net = VQVAE2Net(1, config)
    codebooks = {"quantize_t": net.quantize_t.codebook.clone(), "quantize_b": net.quantize_b.codebook.clone()}
    source = PixelCNNVQVAE2.from_source(
        [
            read_torch_file(folder / f)
            for f in ("train_init.pt", "checkpoint_top_prior.pt", "checkpoint_bottom_prior.pt")
        ],
        config,
    )
    for key, value in net.named_parameters():
        assert torch.equal(value, source[f"vqvae.{key}"]), f"vqvae.{key} differs from the source's initial weights"
    # The file is after create_model()'s training-mode dummy forward, which moved the EMA codebooks:
    # a code no vector picked keeps decay * its initial value in embed_avg.
    for name, initial in codebooks.items():
        unused = source[f"vqvae.{name}.cluster_size"] == 0
        assert unused.any()
        _close(f"{name} initial codes", source[f"vqvae.{name}.embed_avg"][unused], 0.99 * initial[unused], atol=1e-6)
    # train_pixel_cnn.py: its seed, the VQ-VAE with its dummy forward (dropout draws), then the prior.
    for seed, level, make in (
        (101, "top", lambda: TopPrior(512, 16, 20, 4, 2, 10)),
        (102, "bottom", lambda: BottomPrior(512, 16, 20, 9)),
    ):
        torch.manual_seed(seed)
        VQVAE2Net(1, config).train()(torch.zeros(4, 1, 32, 32))
        prior = make()
        init = read_torch_file(folder / f"train_init_{level}_prior.pt")
        assert len(init) == len(prior.state_dict())
        for (key, ours), (name, theirs) in zip(prior.state_dict().items(), init.items(), strict=True):
            assert torch.equal(ours, theirs), f"{level} prior {key} differs from the source's initial {name}"


def test_seed004_initial_weights_are_the_sources() -> None:
    """seed 004's train.py: set_seed(1), then VQVAE(...): our module under seed 1 starts from its weights."""
    init = read_torch_file(ROOT / "vqvae2-seed004" / "train_init.pt")
    config = merge_config(VQVAE2.configs["seed004-hipmri"], VQ_SEED004_SMALL)
    source = VQVAE2.from_source([{"model_state_dict": init}], config)
    torch.manual_seed(1)
    net = VQVAE2Net(1, config)
    for key, value in net.state_dict().items():
        assert torch.equal(value, source[f"net.{key}"]), f"net.{key} differs from the source's initial weights"


# -- the converter's contract ---------------------------------------------------------------------


def test_unknown_and_missing_source_keys_are_errors_naming_them(tmp_path: Path) -> None:
    state = read_torch_file(ROOT / "vqvae2-seed004" / "checkpoint.pt")
    config = merge_config(VQVAE2.configs["seed004-hipmri"], VQ_SEED004_SMALL)
    extra = {**state, "model_state_dict": {**state["model_state_dict"], "enc_b.blocks.9.weight": torch.zeros(1)}}
    with pytest.raises(BenchError, match=r"enc_b\.blocks\.9\.weight"):
        VQVAE2.from_source([extra], config)
    fewer = dict(state["model_state_dict"])
    del fewer["quantize_b.embed_avg"]
    with pytest.raises(BenchError, match=r"quantize_b\.embed_avg"):
        VQVAE2.from_source([{"model_state_dict": fewer}], config)
    vd = read_torch_file(ROOT / "vdvae3d" / "checkpoint.pt")
    graph = dict(vd["top_down_generative_graph_state_dict"])
    graph.pop("module.1.1.conv_z.bias")
    with pytest.raises(BenchError, match=r"1\.1\.conv_z\.bias"):
        VDVAE3D.from_source(
            [{**vd, "top_down_generative_graph_state_dict": graph}], merge_config(VDVAE3D.configs["32"], VDVAE3D_SMALL)
        )


def test_load_formats_and_refusals(tmp_path: Path) -> None:
    config = merge_config(VQVAE2.configs["seed004-hipmri"], VQ_SEED004_SMALL)
    spec = DataSpec(("image",), (1,), 2, (64, 32), (-1.0, 1.0))
    source = ROOT / "vqvae2-seed004" / "checkpoint.pt"
    model = VQVAE2(config, spec)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_weights(model, source, "ours")
    # One of our own torch files is read as ours, and `source` refuses it.
    ours = tmp_path / "ours.pt"
    torch.save(model.state_dict(), ours)
    assert load_weights(VQVAE2(config, spec), ours) == "ours"
    with pytest.raises(BenchError, match="vqvae2 source checkpoint"):
        load_weights(VQVAE2(config, spec), ours, "source")
    # A pickle that needs more than weights_only allows is refused, never unpickled.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model_state_dict": {}, "path": Path("/x")}, unsafe)
    with pytest.raises(CheckpointError, match=r"loaded safely, so it is refused: it pickles pathlib\.\w*Path"):
        load_weights(model, unsafe, "source")


def test_bench_convert_writes_loadable_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vqvae2.safetensors"
    source = ROOT / "vqvae2-seed004" / "checkpoint.pt"
    params = [f"{k}={v}" for k, v in VQ_SEED004_SMALL.items()]
    assert bench_main(["convert", "vqvae2", str(source), str(out), "--params", *params]) == 0
    assert "wrote" in capsys.readouterr().out
    config = merge_config(VQVAE2.configs["seed004-hipmri"], VQ_SEED004_SMALL)
    converted = VQVAE2(config, DataSpec(("image",), (1,), 2, (64, 32), (-1.0, 1.0)))
    load_weights(converted, out)
    direct = _vqvae2("seed004-hipmri", VQ_SEED004_SMALL, "vqvae2-seed004", (64, 32))
    assert all(
        torch.equal(a, b) for a, b in zip(converted.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    # A config that does not fit the file is an error naming the tensor, and nothing is written.
    bad = tmp_path / "bad.safetensors"
    assert bench_main(["convert", "vqvae2", str(source), str(bad)]) == 2
    assert "enc_b.blocks.0.weight" in capsys.readouterr().err and not bad.exists()


def test_suite_load_accepts_a_source_checkpoint(tmp_path: Path) -> None:
    """`load:` of the source's own checkpoint, recognised by its keys, evaluates through `bench run`."""
    import sqlite3

    import yaml

    suite = {
        "name": "load-source",
        "seeds": [0],
        "device": "cpu",
        "models": [
            {
                "plugin": "phvae",
                "config": "mri-ct-nll",
                "params": PHVAE_SMALL,
                "load": str(ROOT / "phvae" / "mri-ct-nll" / "checkpoint.pt"),
            }
        ],
        "datasets": [
            {"plugin": "gold", "root": "embedded", "embedded": {"n": 12, "seed": 0}, "options": {"size": [16, 16]}}
        ],
        "metrics": ["psnr"],
        "evaluation": {"n_samples": 2, "max_items": 4},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert bench_main(["run", str(path), "--output", str(out), "--no-progress", "--no-report"]) == 0
    con = sqlite3.connect(out / "results.sqlite")
    cells = con.execute("SELECT model, status, reason FROM cells WHERE kind = 'model'").fetchall()
    assert cells == [("phvae-mri-ct-nll", "done", None)], cells
