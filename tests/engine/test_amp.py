"""Mixed precision with a real ``torch.amp.GradScaler`` on CPU (forced with ``$BENCH_FORCE_AMP``).

fp16 autocast runs the toy autoencoder's convolutions in half precision, so scaled gradients
genuinely overflow when the loss scale is too large; the scaler has to back off, grow again,
survive skipped updates of every kind and round-trip through a resume.
"""

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fakeplugins import ToyAE, ToyData

from bench_core.checkpoints import load_train_state
from bench_core.torchutil import FORCE_AMP_ENV, seed_everything
from bench_core.trainer import TrainingDiverged, TrainSettings, run_stage

QUICKSTART = Path(__file__).parents[2] / "suites" / "quickstart.yaml"
GROWTH = 8  # clean updates before the scale doubles (torch's default is 2000)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    ToyData.make_embedded(root)
    data = ToyData(root)
    return data.split("train"), data.spec()


@pytest.fixture
def fp16(monkeypatch):
    monkeypatch.setenv(FORCE_AMP_ENV, "1")


@pytest.fixture
def scales(monkeypatch):
    """The loss scale after every ``GradScaler.update`` (a spy on the real method)."""
    seen: list[float] = []
    real = torch.amp.GradScaler.update

    def update(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.get_scale())

    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    return seen


def toy_stage(spec, loss_factor: float = 1.0, spike_every: int = 0, spike: float = 1.0):
    """The toy autoencoder and its stage, the loss multiplied (and every ``spike_every``-th pass by ``spike``)."""
    seed_everything(0)
    model = ToyAE(ToyAE.configs["small"], spec)
    stage = model.stages()[0]
    loss, calls = stage.loss, [0]

    def scaled(batch):
        calls[0] += 1
        factor = loss_factor * (spike if spike_every and calls[0] % spike_every == 0 else 1.0)
        out = loss(batch)
        return {**out, "loss": out["loss"] * factor}

    stage.loss = scaled
    return model, stage


def settings(**kw):
    base = dict(device=torch.device("cpu"), progress=False, precision="amp", grad_scale_growth_interval=GROWTH)
    return TrainSettings(**{**base, **kw})


def test_overflows_back_off_and_the_scale_grows_again(toy, tmp_path, fp16, scales):
    train, spec = toy
    model, stage = toy_stage(spec, loss_factor=100.0)
    report = run_stage(model, stage, train, settings(steps=200, max_consecutive_skips=3), tmp_path / "s.pt")
    assert report.steps == 200 and report.skipped == 0
    # The first five updates overflow in a row (more than the cap) while the scale backs off.
    assert scales[:5] == [2.0**15, 2.0**14, 2.0**13, 2.0**12, 2.0**11]
    # Replay torch's rule: halve on overflow, double after GROWTH clean updates, else keep.
    before, clean, halvings, doublings = 2.0**16, 0, 0, 0
    for after in scales:
        if after == before / 2:
            clean, halvings = 0, halvings + 1
        else:
            clean += 1
            expected = before * 2 if clean == GROWTH else before
            assert after == expected
            if clean == GROWTH:
                clean, doublings = 0, doublings + 1
        before = after
    assert len(scales) == 200 and halvings == report.overflow_skipped > 5 and doublings > 5
    assert report.grad_scale == scales[-1] and report.grad_scale_min == min(scales) == 2.0**10
    assert all(math.isfinite(point["loss"]) for point in report.curve)
    assert report.curve[-1]["loss"] < report.curve[0]["loss"]


def test_resume_restores_the_scaler(toy, tmp_path, fp16):
    train, spec = toy
    straight, stage = toy_stage(spec, loss_factor=100.0)
    whole = run_stage(straight, stage, train, settings(steps=60, checkpoint_every=100), tmp_path / "a.pt")

    first, stage = toy_stage(spec, loss_factor=100.0)
    run_stage(first, stage, train, settings(steps=30, checkpoint_every=10), tmp_path / "b.pt")
    mid = load_train_state(tmp_path / "b.pt")["scaler"]
    assert mid["scale"] != 2.0**16 and mid["_growth_tracker"] > 0  # a state worth restoring
    fresh, stage = toy_stage(spec, loss_factor=100.0)  # a new process: the scaler starts at its defaults
    resumed = run_stage(fresh, stage, train, settings(steps=60, checkpoint_every=10), tmp_path / "b.pt")

    assert resumed.resumed_from == 30
    assert load_train_state(tmp_path / "b.pt")["scaler"] == load_train_state(tmp_path / "a.pt")["scaler"]
    for key in ("skipped", "overflow_skipped", "grad_scale", "grad_scale_min"):
        assert getattr(resumed, key) == getattr(whole, key), key
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "amp"])
@pytest.mark.parametrize("cause", ["nan loss", "threshold"])
def test_skips_follow_one_logic_in_every_precision(toy, tmp_path, fp16, precision, cause):
    train, spec = toy
    model, stage = toy_stage(spec, loss_factor=math.nan if cause == "nan loss" else 1.0)
    if cause == "threshold":
        stage.skip_threshold = 1e-12  # every update is over it
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match="at step 3; 4 consecutive updates skipped") as failure:
        run_stage(model, stage, train, settings(steps=20, max_consecutive_skips=3, precision=precision), tmp_path / "s")
    # Neither a non-finite loss nor finite gradients over the threshold back the scale off.
    assert ("loss scale 65536" in str(failure.value)) == (precision == "amp")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "amp"])
def test_training_goes_on_after_threshold_skips(toy, tmp_path, fp16, precision):
    train, spec = toy
    model, stage = toy_stage(spec, spike_every=4, spike=1e3)
    stage.skip_threshold = 50.0  # between the toy's gradient norms (about 0.5) and the spikes'
    run = settings(steps=40, precision=precision, grad_scale_init=16.0)
    report = run_stage(model, stage, train, run, tmp_path / "s")
    assert report.steps == 40 and report.skipped == 10 and report.overflow_skipped == 0
    scaler = load_train_state(tmp_path / "s")["scaler"]
    if precision == "amp":
        # Skipped updates had finite gradients: they count towards growth, never back the scale off.
        assert report.grad_scale_min == 16.0 and report.grad_scale == 16.0 * 2 ** (40 // GROWTH)
        assert scaler["_growth_tracker"] == 40 % GROWTH
    else:
        assert report.grad_scale is None and report.grad_scale_min is None and scaler == {}


def test_gradients_that_stay_non_finite_still_fail_once_the_scale_is_spent(toy, tmp_path, fp16):
    train, spec = toy
    model, stage = toy_stage(spec)
    model.enc[0].weight.register_hook(lambda grad: grad * math.nan)
    # Scales 16, 8, 4 and 2 are overflow skips; 1, 0.5, 0.25 and 0.125 count towards the cap.
    run = settings(steps=20, max_consecutive_skips=3, grad_scale_init=16.0)
    with pytest.raises(TrainingDiverged, match=r"at step 7; 4 consecutive updates skipped .*loss scale 0\.0625$"):
        run_stage(model, stage, train, run, tmp_path / "s")


def test_amp_without_the_switch_on_cpu_runs_bf16_without_a_scaler(toy, tmp_path, monkeypatch):
    monkeypatch.delenv(FORCE_AMP_ENV, raising=False)
    train, spec = toy
    model, stage = toy_stage(spec, loss_factor=100.0)
    report = run_stage(model, stage, train, settings(steps=5), tmp_path / "s")
    assert report.overflow_skipped == 0 and report.grad_scale is None


@pytest.mark.slow
def test_bench_run_records_the_grad_scale_of_a_forced_amp_phvae_cell(tmp_path, bench_env):
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    phvae = next(m for m in quickstart["models"] if m["plugin"] == "phvae")
    gold = next(d for d in quickstart["datasets"] if d["plugin"] == "gold")
    suite = {
        **{k: quickstart[k] for k in ("name", "description", "seeds")},
        "device": "cpu",
        "precision": "amp",
        "models": [{**phvae, "budget": {"steps": 4, "checkpoint_every": 2}}],
        "datasets": [{**gold, "embedded": {"n": 12, "seed": 0}}],
        "metrics": ["psnr"],
        "evaluation": {"batch_size": 4, "grid_size": 2, "n_samples": 2, "max_items": 4},
    }
    path = tmp_path / "amp.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = subprocess.run(
        [sys.executable, "-m", "bench_core", "run", str(path)],
        cwd=tmp_path, env={**bench_env, FORCE_AMP_ENV: "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    con = sqlite3.connect(tmp_path / "reports" / suite["name"] / "results.sqlite")
    try:
        query = "SELECT status, details FROM cells WHERE model = ?"
        status, details = con.execute(query, (f"{phvae['plugin']}-{phvae['config']}",)).fetchone()
        stage_rows = dict(con.execute("SELECT metric, value FROM results WHERE task = 'train' AND kind = 'training'"))
    finally:
        con.close()
    assert status == "done"
    (stage,) = json.loads(details)["stages"]
    assert stage["steps"] == 4 and 0 < stage["grad_scale_min"] <= stage["grad_scale"]
    assert stage["overflow_skipped"] + stage["skipped"] < 4
    # The stage's rows carry the same figures into the store and the report.
    name = stage["stage"]
    assert stage_rows[f"{name}.grad_scale"] == stage["grad_scale"]
    assert stage_rows[f"{name}.skipped_updates"] == stage["overflow_skipped"] + stage["skipped"]
