"""Tests of the example plugins: medgen-bench's conformance kit, then plugin-specific behaviour.

Run with the package installed (``pip install -e .``), so its entry points exist:
``python -m pytest`` in this folder.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench_core.api import BenchError, DataError, DataSpec
from bench_core.testing import check_dataset_plugin, check_metric_plugin, check_model_plugin

from bench_plugin_example.mae import MAE
from bench_plugin_example.shapes2d import SHAPES, Shapes2D
from bench_plugin_example.tinyae import TinyAE
from bench_plugin_example.tinypix import TinyPix


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny CPU models run faster and steadier on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_entry_points_name_every_plugin():
    # What `bench` discovers: the [project.entry-points.bench] table of the installed distribution.
    found = {ep.name: ep.value for ep in metadata.entry_points(group="bench") if ep.dist.name == "bench-plugin-example"}
    assert found == {
        "tinyae": "bench_plugin_example.tinyae",
        "tinypix": "bench_plugin_example.tinypix",
        "shapes2d": "bench_plugin_example.shapes2d",
        "mae": "bench_plugin_example.mae",
    }


# -- the conformance kit --------------------------------------------------------------------


def test_tinyae_conformance():
    check_model_plugin(TinyAE, config="tiny")


def test_tinyae_conformance_on_shapes2d(tmp_path):
    Shapes2D.make_embedded(tmp_path, n=6, seed=0)
    check_model_plugin(TinyAE, config="tiny", spec=Shapes2D(tmp_path).spec())


def test_tinypix_conformance():
    # The kit picks a paired spec the model accepts and checks translate for its declared task only.
    check_model_plugin(TinyPix, config="tiny")


def test_shapes2d_conformance(tmp_path):
    check_dataset_plugin(Shapes2D, tmp_path)


@pytest.mark.parametrize("dims", [2, 3])
def test_mae_conformance(dims):
    check_metric_plugin(MAE, dims=dims)


# -- the model ----------------------------------------------------------------------------


def spec_of(**changes) -> DataSpec:
    base = {
        "modalities": ("image",),
        "channels": (1,),
        "dims": 2,
        "shape": (32, 32),
        "value_range": (-1.0, 1.0),
    }
    return DataSpec(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"dims": 3, "shape": (16, 16, 16)}, "tinyae is 2D"),
        ({"modalities": ("A", "B"), "channels": (1, 1)}, "paired (A, B)"),
        ({"shape": (30, 32)}, "divisible by 4"),
    ],
)
def test_tinyae_says_why_it_refuses_a_dataset(changes, reason):
    assert reason in TinyAE.incompatibility(spec_of(**changes))
    assert TinyAE.incompatibility(spec_of()) is None


def test_tinyae_learns_shapes_and_outputs_stay_in_range(tmp_path):
    Shapes2D.make_embedded(tmp_path, n=40, seed=1)
    data = Shapes2D(tmp_path)
    torch.manual_seed(0)
    model = TinyAE(TinyAE.configs["tiny"], data.spec())
    (stage,) = model.stages()
    train = data.split("train")
    batch = {"image": torch.stack([train[i]["image"] for i in range(len(train))])}
    # A hand-written loop over the stage's own parameters and loss (the engine's loop adds
    # clipping, EMA and checkpoints around the same two callables).
    optimizer = torch.optim.Adam(stage.parameters(), lr=stage.optimizer.lr)
    losses = []
    for _ in range(60):
        out = stage.loss(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        recon = model.reconstruct(batch["image"], "image")
        samples = model.sample(4, generator=torch.Generator().manual_seed(0))
        again = model.sample(4, generator=torch.Generator().manual_seed(0))
        kl = model.evaluation_metrics([{"image": batch["image"]}])
    assert recon.shape == batch["image"].shape and samples.shape == (4, 1, 32, 32)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert torch.equal(samples, again)  # the engine's seeded generator makes samples reproducible
    assert kl["kl_nats"] > 0.0


def test_tinyae_maps_outputs_into_the_declared_range():
    model = TinyAE(TinyAE.configs["tiny"], spec_of(value_range=(-1000.0, 3000.0)))
    with torch.no_grad():
        y = model.sample(3, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert float(y.min()) >= -1000.0 and float(y.max()) <= 3000.0


# -- the one-way translator ----------------------------------------------------------------

CT_MR = DataSpec(("ct", "mr"), (1, 1), 2, (16, 16), ranges=((-1000.0, 3000.0), (0.0, 1.0)))


def test_tinypix_translates_one_way_between_the_modalities_own_ranges():
    torch.manual_seed(0)
    model = TinyPix(TinyPix.configs["tiny"], CT_MR)
    ct = torch.linspace(-1000.0, 3000.0, 2 * 16 * 16).view(2, 1, 16, 16)
    with torch.no_grad():
        mr = model.translate(ct, "ct", "mr")
    assert mr.shape == ct.shape and float(mr.min()) >= 0.0 and float(mr.max()) <= 1.0
    with pytest.raises(BenchError, match="tinypix translates ct to mr only, not mr to ct"):
        model.translate(mr, "mr", "ct")
    assert TinyPix.tasks == {"A2B"}


def test_tinypix_incompatibility_follows_its_config():
    assert TinyPix.incompatibility(CT_MR, TinyPix.configs["tiny"]) is None  # 16 is divisible by 2**2
    reason = TinyPix.incompatibility(CT_MR, {**TinyPix.configs["tiny"], "levels": 5})
    assert reason == "tinypix with levels=5 needs height and width divisible by 32, got (16, 16)"
    single = DataSpec(("image",), (1,), 2, (16, 16), (0.0, 1.0))
    assert "one modality (image)" in TinyPix.incompatibility(single, TinyPix.configs["tiny"])


# -- the dataset --------------------------------------------------------------------------


def test_shapes2d_embedded_data_is_reproducible_and_split(tmp_path):
    Shapes2D.make_embedded(tmp_path / "a", n=20, seed=3)
    Shapes2D.make_embedded(tmp_path / "b", n=20, seed=3)
    a, b = Shapes2D(tmp_path / "a"), Shapes2D(tmp_path / "b")
    assert a.fingerprint() == b.fingerprint()
    assert dict(a.spec().split_sizes) == {"train": 14, "val": 3, "test": 3}
    ids = [a.split(s)[i]["id"] for s in ("train", "val", "test") for i in range(len(a.split(s)))]
    assert len(set(ids)) == 20 and {i.split("_")[1] for i in ids} <= set(SHAPES)
    Shapes2D.make_embedded(tmp_path / "c", n=20, seed=4)
    assert Shapes2D(tmp_path / "c").fingerprint() != a.fingerprint()


def test_shapes2d_names_bad_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="split folder .* does not exist"):
        Shapes2D(tmp_path)
    Shapes2D.make_embedded(tmp_path, n=6, seed=0)
    with pytest.raises(DataError, match="takes no options"):
        Shapes2D(tmp_path, size=[64, 64])
    broken = tmp_path / "test" / "99999_disc.png"
    broken.write_bytes(b"not a png")
    rgb = tmp_path / "test" / "99998_disc.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(rgb)
    small = tmp_path / "test" / "99997_disc.png"
    Image.fromarray(np.zeros((16, 32), dtype=np.uint8)).save(small)
    test = Shapes2D(tmp_path).split("test")
    problems = {}
    for path in (broken, rgb, small):
        with pytest.raises(DataError) as info:
            test[test.files.index(path)]
        problems[Path(path).name] = str(info.value)
    assert "cannot read PNG" in problems[broken.name] and str(broken) in problems[broken.name]
    assert "mode RGB" in problems[rgb.name]
    assert "16x32" in problems[small.name]


# -- the metric ---------------------------------------------------------------------------


def test_mae_values_and_settings():
    metric = MAE(data_range=1.0, dims=2)
    pred = torch.zeros(2, 1, 4, 4)
    target = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.25)])
    assert metric.update(pred, target).tolist() == [0.5, 0.25]
    result = metric.compute()
    assert (result.value, result.std, result.n) == (0.375, 0.125, 2)
    assert result.settings["data_range"] == 1.0 and result.settings["std"] == "population (ddof=0)"
    assert result.per_item == [0.5, 0.25]
    with pytest.raises(BenchError, match="shapes differ"):
        metric.update(pred, target[:1])
    with pytest.raises(BenchError, match=r"mae: pred values lie in \[-1, -1\], outside the declared range \[0, 1\]"):
        metric.update(pred - 1, target)
