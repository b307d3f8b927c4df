"""Gradient accumulation, paired augmentation, validation with best-checkpoint selection,
optimiser continuation across stages, and evaluation variants (weights x temperature)."""

import json
import sqlite3

import pytest
import torch
from torch import nn

from bench_core.api import BenchError, OptimizerSpec, TrainingStage
from bench_core.augment import PairedAugment, check_settings
from bench_core.checkpoints import load_weights
from bench_core.trainer import TrainSettings, run_stage


class Pairs(torch.utils.data.Dataset):
    """n items of 4 features and a linear target, as the engine's dict items."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.1 * torch.randn(
            n, generator=g, dtype=torch.float64
        )

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "id": str(i)}


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1).double()
        self.batches: list[int] = []

    def loss(self, batch):
        self.batches.append(len(batch["x"]))
        err = self.lin(batch["x"]).squeeze(-1) - batch["y"]
        return {"loss": (err**2).mean()}

    def stage(self, name="fit", **kw):
        kw.setdefault("optimizer", OptimizerSpec("sgd", lr=0.05, betas=(0.0, 0.999)))
        return TrainingStage(name, self.parameters, self.loss, **kw)


def settings(**kw):
    return TrainSettings(device=torch.device("cpu"), progress=False, **kw)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_equals_the_big_batch(tmp_path):
    data = Pairs(48)
    big, small = Linear(), Linear()
    run_stage(big, big.stage(batch_size=12), data, settings(steps=7), tmp_path / "a.pt")
    report = run_stage(small, small.stage(batch_size=4, accumulate=3), data, settings(steps=7), tmp_path / "b.pt")
    assert report.steps == 7
    assert small.batches == [4] * 21 and big.batches == [12] * 7
    torch.testing.assert_close(params(small), params(big), rtol=1e-12, atol=1e-12)


def test_accumulation_with_a_short_last_pass_weights_by_items(tmp_path):
    # 10 items, passes of 4: 4 + 4 + 2 in the one update of each epoch, equal to one batch of 10.
    data = Pairs(10)
    big, small = Linear(), Linear()
    run_stage(big, big.stage(batch_size=10), data, settings(steps=3), tmp_path / "a.pt")
    run_stage(small, small.stage(batch_size=4, accumulate=3), data, settings(steps=3), tmp_path / "b.pt")
    assert small.batches == [4, 4, 2] * 3
    torch.testing.assert_close(params(small), params(big), rtol=1e-12, atol=1e-12)


def test_settings_accumulate_overrides_the_stage_and_must_be_positive(tmp_path):
    data = Pairs(24)
    model = Linear()
    run_stage(model, model.stage(batch_size=4, accumulate=3), data, settings(steps=2, accumulate=2), tmp_path / "a")
    assert model.batches == [4] * 4
    with pytest.raises(BenchError, match="accumulate must be at least 1, got 0"):
        run_stage(model, model.stage(accumulate=0), data, settings(steps=1), tmp_path / "b")


def test_validation_keeps_best_weights_without_changing_training(tmp_path):
    data = Pairs(40)
    plain = Linear()
    run_stage(plain, plain.stage(batch_size=8), data, settings(steps=10), tmp_path / "plain.pt")

    scores = iter([1.0, 5.0, 2.0, 4.0, 3.0])
    seen: list[torch.Tensor] = []

    def validate() -> float:
        torch.rand(100)  # validation that draws random numbers must not move training's RNG
        assert not validated.training
        seen.append(params(validated).clone())
        return next(scores)

    validated = Linear()
    report = run_stage(
        validated, validated.stage(batch_size=8), data,
        settings(steps=10, validate=validate, validate_every=2, best_path=tmp_path / "best.safetensors",
                 validate_key="val_psnr"),
        tmp_path / "v.pt",
    )  # fmt: skip
    assert len(seen) == 5  # steps 2, 4, 6, 8 and the end (10)
    assert report.best_score == 5.0 and report.best_step == 4
    assert [p["step"] for p in report.curve if "val_psnr" in p] == [2, 4, 6, 8, 10]
    torch.testing.assert_close(params(validated), params(plain), rtol=0, atol=0)
    best = Linear()
    load_weights(best, tmp_path / "best.safetensors")
    torch.testing.assert_close(params(best), seen[1], rtol=0, atol=0)


def test_validation_every_epoch_and_lower_is_better(tmp_path):
    data = Pairs(16)  # batch 4: 4 steps per epoch
    values = iter([3.0, 1.0, 2.0])
    model = Linear()
    report = run_stage(
        model, model.stage(batch_size=4), data,
        settings(steps=12, validate=lambda: next(values), validate_every_epochs=1, validate_higher_is_better=False,
                 best_path=tmp_path / "best.safetensors"),
        tmp_path / "v.pt",
    )  # fmt: skip
    assert report.best_score == 1.0 and report.best_step == 8


def test_optimizer_state_continues_into_the_next_stage(tmp_path):
    data = Pairs(16)
    model = Linear()
    adam = OptimizerSpec("adam", lr=1e-2)
    first = run_stage(
        model, model.stage("warmup", optimizer=adam, batch_size=4), data, settings(steps=3), tmp_path / "a"
    )
    second = run_stage(
        model, model.stage("main", optimizer=adam, batch_size=4, continue_optimizer=True), data,
        settings(steps=2, initial_optimizer=first.optimizer_state), tmp_path / "b",
    )  # fmt: skip
    assert float(second.optimizer_state["state"][0]["step"]) == 5.0
    fresh = run_stage(
        model, model.stage("again", optimizer=adam, batch_size=4), data, settings(steps=2), tmp_path / "c"
    )
    assert float(fresh.optimizer_state["state"][0]["step"]) == 2.0


def test_optimizer_continuation_refuses_other_parameters(tmp_path):
    data = Pairs(16)
    model = Linear()
    first = run_stage(model, model.stage(batch_size=4), data, settings(steps=1), tmp_path / "a")
    only_bias = model.stage("bias", batch_size=4, continue_optimizer=True)
    only_bias.parameters = lambda: [model.lin.bias]
    with pytest.raises(BenchError, match="optimised 2 parameter tensors and this one 1"):
        run_stage(model, only_bias, data, settings(steps=1, initial_optimizer=first.optimizer_state), tmp_path / "b")


# -- augmentation -----------------------------------------------------------------------------


def _pair(n=6, h=8, w=10):
    a = torch.arange(n * h * w, dtype=torch.float32).reshape(n, 1, h, w) / (n * h * w)
    return {"A": a, "B": torch.cat([a, 1 - a], dim=1), "id": [str(i) for i in range(n)]}


def test_flips_apply_the_same_draw_to_both_modalities():
    batch = _pair()
    aug = PairedAugment(check_settings({"hflip": 0.5, "vflip": 0.5}, "augment"), ("A", "B"), 0.0)
    out = aug(batch, torch.Generator().manual_seed(3))
    for i in range(6):
        a, b = out["A"][i, 0], out["B"][i]
        # B's first channel is A: whatever was flipped, it was flipped alike.
        torch.testing.assert_close(b[0], a)
        torch.testing.assert_close(b[1], 1 - a)
        options = [
            batch["A"][i, 0],
            batch["A"][i, 0].flip(-1),
            batch["A"][i, 0].flip(-2),
            batch["A"][i, 0].flip(-1, -2),
        ]
        assert any(torch.equal(a, o) for o in options)
    assert out["id"] == batch["id"]


def test_flip_probabilities_one_and_zero():
    batch = _pair()
    always = PairedAugment({"hflip": 1.0}, ("A", "B"), 0.0)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(always["A"], batch["A"].flip(-1))
    never = PairedAugment({"hflip": 0.0, "vflip": 0.0}, ("A", "B"), 0.0)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(never["B"], batch["B"])


def test_resized_crop_identity_and_padding_with_the_range_low_end():
    batch = _pair(h=16, w=16)
    same = PairedAugment(check_settings({"resized_crop": {"p": 1.0}}, "augment"), ("A", "B"), -1.0)
    torch.testing.assert_close(same(batch, torch.Generator())["A"], batch["A"], atol=1e-6, rtol=0)
    shifted = PairedAugment({"resized_crop": {"p": 1.0, "scale": 0.0, "shift": 16}}, ("A", "B"), -1.0)
    out = shifted(batch, torch.Generator().manual_seed(1))
    moved = [i for i in range(6) if not torch.allclose(out["A"][i], batch["A"][i])]
    assert moved  # offsets in [-8, 8]: most items move
    for i in moved:  # rows or columns shifted in from outside read -1 in both modalities alike
        assert (out["A"][i] == -1.0).any() and torch.equal(out["B"][i, 0], out["A"][i, 0])


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"rotate": 0.5}, "augment: unknown augmentation 'rotate'; expected one of hflip, vflip, resized_crop"),
        ({"hflip": 2}, "augment.hflip: expected a probability between 0 and 1, got 2"),
        (
            {"resized_crop": {"p": 0.5, "zoom": 1}},
            "augment.resized_crop: unknown key(s) ['zoom']; expected p, scale, shift",
        ),
        ({"resized_crop": {"scale": 1.5}}, "augment.resized_crop: need 0 <= scale < 1 and shift >= 0"),
    ],
)
def test_bad_augmentation_settings_are_named(settings_, message):
    with pytest.raises(BenchError) as info:
        check_settings(settings_, "augment")
    assert str(info.value).startswith(message)


def test_trainer_augments_training_batches_only_for_stages_that_allow_it(tmp_path):
    seen = []

    class Recorder(Linear):
        def loss(self, batch):
            seen.append(batch["x"].clone())
            return super().loss(batch)

    data = Pairs(8)

    def negate(batch, generator):
        return {**batch, "x": -batch["x"]}

    model = Recorder()
    run_stage(model, model.stage(batch_size=8), data, settings(steps=1, augment=negate), tmp_path / "a")
    run_stage(
        model, model.stage("raw", batch_size=8, augment=False), data, settings(steps=1, augment=negate), tmp_path / "b"
    )
    assert torch.equal(seen[0].sort(0).values, (-data.x).sort(0).values)
    assert torch.equal(seen[1].sort(0).values, data.x.sort(0).values)


# -- through the runner -----------------------------------------------------------------------


def test_suite_validation_and_variants(run_bench, write_suite, tmp_path):
    from toy_suites import toy_suite

    suite = toy_suite(
        validation={"metric": "toy-mae", "every_steps": 4},
        evaluation={"batch_size": 4, "grid_size": 2, "n_samples": 4, "save_images": False,
                    "variants": [{"checkpoint": "best"}, {"checkpoint": "latest", "temperature": 0.0},
                                 {"checkpoint": "latest", "temperature": 2.0}]},
        datasets=[{"plugin": "toy", "root": "embedded", "augment": {"hflip": 0.5}}],
    )  # fmt: skip
    done = run_bench("run", str(write_suite(suite)), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    db = sqlite3.connect(tmp_path / "reports" / "toy" / "results.sqlite")
    rows = {
        (t, m): v
        for t, m, v in db.execute(
            "SELECT task, metric, value FROM results WHERE kind != 'baseline' AND metric='toy-mae'"
        )
    }
    assert {"recon", "recon@latest-t0", "recon@latest-t2"} <= {t for t, _ in rows}
    # The toy model adds 0.1 * t to its reconstruction (0.1 on the [0, 1] scale at t = 2): visibly worse.
    assert rows[("recon@latest-t2", "toy-mae")] > rows[("recon@latest-t0", "toy-mae")] + 0.02
    (details,) = [json.loads(d) for (d,) in db.execute("SELECT details FROM cells WHERE kind = 'model'")]
    curve = details["stages"][0]["curve"]
    assert [p["step"] for p in curve if "val_recon_toy-mae" in p] == [4, 8, 12]
    ckpts = list((tmp_path / "reports" / "toy" / "checkpoints").glob("*/best.safetensors"))
    assert len(ckpts) == 1


def test_best_variant_needs_a_validation_section(run_bench, write_suite):
    from toy_suites import toy_suite

    suite = toy_suite(evaluation={"variants": [{"checkpoint": "best"}]})
    done = run_bench("run", str(write_suite(suite)), "--dry-run")
    assert done.returncode == 2
    assert "asks for checkpoint: best, but the suite has no `validation:` section" in done.stderr + done.stdout
