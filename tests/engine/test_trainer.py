"""The engine's training loop: learning, skipping, divergence, EMA, resume identity, device choice."""

import pytest
import torch
from fakeplugins import ToyAE, ToyData

from bench_core.api import BenchError, OptimizerSpec, TrainingStage
from bench_core.torchutil import resolve_device, seed_everything
from bench_core.trainer import EpochSampler, TrainingDiverged, TrainSettings, run_stage


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    ToyData.make_embedded(root)
    data = ToyData(root)
    return data.split("train"), data.spec()


def make_model(spec, **config):
    seed_everything(0)
    return ToyAE({**ToyAE.configs["small"], **config}, spec)


def settings(**kw):
    return TrainSettings(device=torch.device("cpu"), progress=False, **kw)


def test_loss_decreases_and_curve_recorded(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    report = run_stage(model, model.stages()[0], train, settings(steps=60), tmp_path / "s.pt")
    assert report.steps == 60 and report.skipped == 0
    assert report.curve[-1]["loss"] < 0.5 * report.curve[0]["loss"]
    assert report.images_per_second and report.images_per_second > 0


def test_non_finite_loss_fails_after_cap(toy, tmp_path):
    train, spec = toy
    model = make_model(spec, nan_loss=True)
    with pytest.raises(TrainingDiverged, match="loss nan at step 3; 4 consecutive updates skipped"):
        run_stage(model, model.stages()[0], train, settings(steps=50, max_consecutive_skips=3), tmp_path / "s.pt")


def test_skip_threshold_counts_skips_and_leaves_weights(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    stage = model.stages()[0]
    stage.skip_threshold = 1e-12  # every update is over the threshold
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged):
        run_stage(model, stage, train, settings(steps=20, max_consecutive_skips=5), tmp_path / "s.pt")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_resume_gives_identical_weights(toy, tmp_path):
    train, spec = toy
    straight = make_model(spec)
    run_stage(straight, straight.stages()[0], train, settings(steps=14, checkpoint_every=100), tmp_path / "a.pt")

    resumed = make_model(spec)
    state = tmp_path / "b.pt"
    run_stage(resumed, resumed.stages()[0], train, settings(steps=8, checkpoint_every=4), state)
    fresh = make_model(spec)  # a new process: fresh weights, state comes from the file
    report = run_stage(fresh, fresh.stages()[0], train, settings(steps=14, checkpoint_every=4), state)
    assert report.resumed_from == 8
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_ema_weights_are_used_after_the_stage(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    stage = model.stages()[0]
    stage.ema_decay = 0.5
    start = [p.detach().clone() for p in model.parameters()]
    run_stage(model, stage, train, settings(steps=5), tmp_path / "s.pt")
    plain = make_model(spec)
    run_stage(plain, plain.stages()[0], train, settings(steps=5), tmp_path / "p.pt")
    # EMA weights differ from both the start and the raw final weights.
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(plain.parameters(), model.parameters(), strict=True))


def test_frozen_modules_do_not_change(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    stage = TrainingStage(
        "dec", model.dec.parameters, model._loss, OptimizerSpec("adam", 1e-2), frozen=lambda: [model.enc]
    )
    enc_before = [p.detach().clone() for p in model.enc.parameters()]
    run_stage(model, stage, train, settings(steps=5), tmp_path / "s.pt")
    assert all(torch.equal(a, b) for a, b in zip(enc_before, model.enc.parameters(), strict=True))
    assert all(p.requires_grad for p in model.enc.parameters())  # restored after the stage


def test_epochs_budget_and_sampler():
    assert sorted(EpochSampler(10, 3, 1)) == list(range(10))
    assert list(EpochSampler(10, 3, 1, start=4)) == list(EpochSampler(10, 3, 1))[4:]
    assert list(EpochSampler(10, 3, 1)) != list(EpochSampler(10, 3, 2))


def test_unknown_optimizer_and_empty_split(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    stage = TrainingStage("x", model.parameters, model._loss, OptimizerSpec("lbfgs"))
    with pytest.raises(BenchError, match="unknown optimizer 'lbfgs'"):
        run_stage(model, stage, train, settings(steps=1), tmp_path / "s.pt")
    with pytest.raises(BenchError, match="training split is empty"):
        run_stage(model, model.stages()[0], [], settings(steps=1), tmp_path / "s.pt")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(BenchError, match="no CUDA device"):
            resolve_device("cuda")


def test_bf16_autocast_path_trains_on_cpu(toy, tmp_path):
    train, spec = toy
    model = make_model(spec)
    report = run_stage(model, model.stages()[0], train, settings(steps=10, precision="bf16"), tmp_path / "s.pt")
    assert report.steps == 10 and report.skipped == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights


def test_clip_groups_clip_each_group_separately(toy, tmp_path):
    from bench_core.trainer import _clip

    train, spec = toy
    model = make_model(spec)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    stage = model.stages()[0]
    stage.grad_clip = 1.0
    stage.clip_groups = lambda: [model.enc.parameters(), model.dec.parameters()]
    norm = _clip(stage, list(model.parameters()))
    enc = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.enc.parameters()]))
    dec = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.dec.parameters()]))
    assert enc == pytest.approx(1.0, rel=1e-4) and dec == pytest.approx(1.0, rel=1e-4)
    n_enc = sum(p.numel() for p in model.enc.parameters())
    n_dec = sum(p.numel() for p in model.dec.parameters())
    assert float(norm) == pytest.approx(10.0 * (n_enc + n_dec) ** 0.5, rel=1e-4)


def test_compile_children_keeps_outputs(toy):
    from bench_core.torchutil import compile_children

    _, spec = toy
    model = make_model(spec)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    before = model.reconstruct(x, "image").detach()
    # The "eager" backend exercises the compile path on CPU without a C++ toolchain; CUDA runs use inductor.
    assert compile_children(model, backend="eager") == ["enc", "dec"]
    assert torch.allclose(model.reconstruct(x, "image"), before, atol=1e-6)
    assert model.enc._compiled_call_impl is not None
