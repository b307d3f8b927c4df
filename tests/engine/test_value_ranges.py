"""Per-modality value ranges (#19.2): DataSpec.ranges, and a CT-in-HU / MR-in-[0, 1] pair scored end to end."""

from __future__ import annotations

from pathlib import Path

import fakeplugins
import numpy as np
import pytest
import torch
from toy_suites import toy_suite

from bench_core.api import DataSpec
from bench_core.augment import PairedAugment, check_settings
from bench_core.cells import plan
from bench_core.pipeline import spec_dict
from bench_core.plugins import load_registry
from bench_core.runner import Runner
from bench_core.store import ResultsStore
from bench_core.suite import Suite

HU, UNIT = (-1000.0, 3000.0), (0.0, 1.0)


def test_one_value_range_is_every_modalitys_range():
    spec = DataSpec(("A", "B"), (1, 1), 2, (8, 8), (-1.0, 1.0))
    assert spec.ranges == ((-1.0, 1.0), (-1.0, 1.0)) and spec.range_of("B") == (-1.0, 1.0)
    same = DataSpec(("A", "B"), (1, 1), 2, (8, 8), ranges=((0, 1), (0, 1)))
    assert same.value_range == (0.0, 1.0)  # the 1.0 form still reads the common range
    assert spec_dict(spec) == {**spec_dict(spec), "value_range": [-1.0, 1.0]} and "ranges" not in spec_dict(spec)


def test_modalities_with_their_own_ranges():
    spec = DataSpec(("ct", "mr"), (1, 1), 2, (8, 8), ranges=(HU, UNIT))
    assert spec.range_of("ct") == HU and spec.range_of("mr") == UNIT
    assert spec.value_range is None  # no single range: code reading it must ask per modality
    assert spec_dict(spec)["ranges"] == {"ct": list(HU), "mr": list(UNIT)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "DataSpec needs value_range (one range) or ranges (one per modality)"),
        ({"ranges": (HU,)}, "for modalities ('ct', 'mr'); give one each"),
        ({"value_range": UNIT, "ranges": (HU, UNIT)}, "DataSpec value_range (0.0, 1.0) contradicts ranges"),
        ({"ranges": (HU, (1.0, 1.0))}, "DataSpec value range (1, 1) must have low < high"),
    ],
)
def test_bad_ranges_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        DataSpec(("ct", "mr"), (1, 1), 2, (8, 8), **kwargs)
    assert message in str(err.value)


def _psnr(pred01: np.ndarray, target01: np.ndarray) -> float:
    """Mean over items of 10 log10(1 / MSE), by hand (float64)."""
    mse = ((pred01 - target01) ** 2).reshape(len(pred01), -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / mse)))


def test_ct_in_hounsfield_units_and_mr_in_unit_range_score_by_their_own_ranges(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    suite = Suite.model_validate(toy_suite(
        models=[{"plugin": "toy-ae", "budget": {"steps": 2}}], metrics=["psnr"],
        datasets=[{"plugin": "toy", "root": "embedded", "options": {"ct_mr": True}}],
        evaluation={"batch_size": 4, "save_images": False},
    ))  # fmt: skip
    registry = load_registry(extra_modules=[fakeplugins])
    Runner(suite, registry, output_dir=tmp_path / "out").run(plan(suite))
    store = ResultsStore(tmp_path / "out")
    psnr = {(r.model, r.task): r.value for r in store.results() if r.metric == "psnr" and r.kind == "baseline"}
    store.close()

    root = next((tmp_path / "cache" / "embedded").glob("toy-*"))
    x_test = np.stack([np.load(f) for f in sorted((root / "test").glob("*.npy"))]).astype(np.float64)
    x_train = np.stack([np.load(f) for f in sorted((root / "train").glob("*.npy"))]).astype(np.float64)
    # In [0, 1] by their own ranges: CT (2000 x + 1000 + 1000) / 4000 = (x + 1) / 2; MR (1 - x) / 2 as it is.
    ct01, mr01 = (x_test + 1) / 2, (1 - x_test) / 2
    # identity carries CT's position in its range to MR's range (and back): the error is x either way.
    assert psnr[("baseline:identity", "A2B")] == pytest.approx(_psnr(ct01, mr01), rel=1e-4)
    assert psnr[("baseline:identity", "B2A")] == pytest.approx(_psnr(mr01, ct01), rel=1e-4)
    # mean-image predicts the training mean, in HU for CT and in [0, 1] for MR.
    mean_ct01, mean_mr01 = ((x_train + 1) / 2).mean(0), ((1 - x_train) / 2).mean(0)
    assert psnr[("baseline:mean-image", "A2A")] == pytest.approx(_psnr(np.broadcast_to(mean_ct01, ct01.shape), ct01),
                                                                 rel=1e-4)  # fmt: skip
    assert psnr[("baseline:mean-image", "A2B")] == pytest.approx(_psnr(np.broadcast_to(mean_mr01, mr01.shape), mr01),
                                                                 rel=1e-4)  # fmt: skip


def test_a_crop_pads_each_modality_with_the_low_end_of_its_own_range():
    settings = check_settings({"resized_crop": {"p": 1.0, "scale": 0.3, "shift": 8}}, "augment")
    batch = {"A": torch.full((4, 1, 16, 16), HU[1]), "B": torch.full((4, 1, 16, 16), UNIT[1]), "id": list("abcd")}
    out = PairedAugment(settings, ("A", "B"), {"A": HU[0], "B": UNIT[0]})(batch, torch.Generator().manual_seed(0))
    ct01 = (out["A"] - HU[0]) / (HU[1] - HU[0])
    assert float(out["B"].min()) < 0.5  # the crops reach outside the image, where the padding is read
    torch.testing.assert_close(ct01, out["B"], atol=1e-6, rtol=0)  # the same position in each range
