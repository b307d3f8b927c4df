"""Memorisation metrics (copies, authenticity, data-copying): brute-force references, training-split feeding, planes."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from bench_core import evaluator
from bench_core.api import SAMPLE, BenchError, DataSpec, MetricPlugin
from bench_core.evaluator import EvalSettings, tasks_for
from bench_plugins.metrics import features, inception, planes
from bench_plugins.metrics.memorisation import (
    NO_TRAIN,
    Authenticity,
    Copies,
    DataCopying,
    bench_metrics,
    ct_statistic,
    kmeans,
    mann_whitney_z,
)

RANDOM = "random:0"
PYRAMID = {"features": "pyramid"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64)) ** 2).sum(-1))


def smooth(n: int, seed: int, size: int = 12, dims: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, *[3] * dims), generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=(size,) * dims, mode=mode, align_corners=False)


def fed(cls, train: torch.Tensor, fake: torch.Tensor, test: torch.Tensor | None = None, **options):
    """A metric fed like the engine feeds it: samples against test images, then the training split in batches."""
    metric = cls(dims=train.dim() - 2, **{**PYRAMID, **options})
    if test is None:
        test = smooth(len(fake), seed=99, size=train.shape[-1], dims=train.dim() - 2)
    metric.update(fake, test)
    for start in range(0, len(train), 7):
        metric.update_train(train[start : start + 7], [f"train_{i}" for i in range(start, min(start + 7, len(train)))])
    return metric


def planted(n_train: int = 40, n_fake: int = 30, copies: int = 6, seed: int = 0):
    """Training images and samples of which the first ``copies`` are exact training images, two near ones."""
    train = smooth(n_train, seed=seed)
    fake = smooth(n_fake, seed=seed + 1)
    fake[:copies] = train[:copies]
    fake[copies : copies + 2] = (train[copies : copies + 2] + 1e-4).clamp(0, 1)
    return train, fake


def reference(train: np.ndarray, fake: np.ndarray, percentile: float = 1.0) -> dict[str, object]:
    """Copies and authenticity written out on the full distance matrices."""
    tt = distances(train, train)
    np.fill_diagonal(tt, np.inf)
    train_nn = tt.min(axis=1)
    gt = distances(fake, train)
    nearest, nearest_idx = gt.min(axis=1), gt.argmin(axis=1)
    threshold = np.percentile(train_nn, percentile)
    return {
        "copies": float((nearest <= threshold).mean()),
        "authenticity": float((nearest > train_nn[nearest_idx]).mean()),
        "nearest": nearest,
        "threshold": threshold,
    }


@pytest.mark.parametrize("chunk", [5, 2048])
def test_copies_and_authenticity_equal_brute_force(chunk):
    train, fake = planted()
    space = features.PyramidSpace()
    ft, ff = space(train, True), space(fake, False)
    expected = reference(ft, ff)
    copies = fed(Copies, train, fake, chunk_size=chunk).compute()
    authenticity = fed(Authenticity, train, fake, chunk_size=chunk).compute()
    assert copies.value == pytest.approx(expected["copies"], abs=1e-6)
    assert authenticity.value == pytest.approx(expected["authenticity"], abs=1e-6)
    assert copies.value >= 6 / 30 and authenticity.value <= 24 / 30  # the planted copies are caught
    np.testing.assert_allclose(np.array(copies.per_item) * expected["threshold"], expected["nearest"], rtol=1e-12)
    assert copies.per_item[:6] == [0.0] * 6 and authenticity.per_item[:6] == [0.0] * 6
    assert (copies.n, copies.settings["n_train"], copies.settings["n_fake"]) == (30, 40, 30)
    assert copies.settings["percentile"] == 1.0 and authenticity.settings["status"] == "ok"


def test_percentile_and_duplicated_training_items():
    # Training duplicates make the 1st-percentile distance 0: exact copies still count (<=), near ones do not.
    train, fake = planted()
    train[30:34] = train[0]
    space = features.PyramidSpace()
    expected = reference(space(train, True), space(fake, False), percentile=5.0)
    assert reference(space(train, True), space(fake, False))["threshold"] == 0.0
    assert fed(Copies, train, fake).compute().value == pytest.approx(6 / 30, abs=1e-12)
    assert fed(Copies, train, fake, percentile=5.0).compute().value == pytest.approx(expected["copies"], abs=1e-6)


def test_data_copying_statistic_equals_meehan_reference():
    rng = np.random.default_rng(1)
    train, test, fake = rng.standard_normal((60, 5)), rng.standard_normal((30, 5)), rng.standard_normal((25, 5))
    fake[:8] = train[:8] + 1e-3  # some copying
    labels = [torch.from_numpy((s[:, 0] > 0).astype(np.int64) + (s[:, 1] > 1)) for s in (train, test, fake)]
    tau = 3 / 25
    value, cells = ct_statistic(*(torch.from_numpy(s) for s in (train, test, fake)), tuple(labels), 3, tau)
    # Meehan et al.'s code: per cell, distances to the cell's training items, scipy's U, their z-score.
    lt, lp, lq = (lab.numpy() for lab in labels)
    total, weights = 0.0, 0.0
    for c in range(3):
        t, p, q = train[lt == c], test[lp == c], fake[lq == c]
        if not (len(t) and len(p) and len(q)):
            assert not cells[c]["in_statistic"]
            continue
        lq_d, lp_d = distances(q, t).min(axis=1), distances(p, t).min(axis=1)
        u = mannwhitneyu(lq_d, lp_d, alternative="less").statistic
        m, n = len(q), len(p)
        z = (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)
        assert cells[c]["z_u"] == pytest.approx(z, rel=1e-12), c
        if m / 25 > tau:
            total, weights = total + n / 30 * z, weights + n / 30
    assert value == pytest.approx(total / weights, rel=1e-12)


def test_mann_whitney_z_counts_ties_as_half():
    generated, test = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 3.0, 0.5])
    u = sum((g > t) + 0.5 * (g == t) for g in generated for t in test)
    assert mann_whitney_z(generated, test) == pytest.approx((u - (6 - 0.5)) / math.sqrt(12 * 8 / 12), rel=1e-12)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.from_numpy(np.concatenate([c + rng.standard_normal((20, 2)) for c in centres]))
    found = kmeans(x, 3, seed=0)
    labels = torch.cdist(x, found).argmin(dim=1).reshape(3, 20)
    assert all(len(set(row.tolist())) == 1 for row in labels) and len(set(labels[:, 0].tolist())) == 3
    assert torch.equal(found, kmeans(x, 3, seed=0))
    assert torch.isfinite(kmeans(torch.zeros(5, 2, dtype=torch.float64), 2, seed=1)).all()  # identical points


def test_data_copying_flags_a_copying_generator_and_lists_the_pairs():
    train = smooth(90, seed=3)
    test, fresh = smooth(45, seed=4), smooth(45, seed=5)
    copier = train[:45] + 0.0
    copying = fed(DataCopying, train, copier, test, cells=2, pca_dims=8).compute()
    honest = fed(DataCopying, train, fresh, test, cells=2, pca_dims=8).compute()
    assert copying.value < -3 < honest.value < 3
    pairs = copying.settings["closest_pairs"]
    assert len(pairs) == 8 and all(p["distance"] == 0.0 and p["copy"] for p in pairs)
    assert {p["train_id"] for p in pairs} == {f"train_{p['generated_index']}" for p in pairs}
    assert sum(c["n_train"] for c in copying.settings["cells_detail"]) == 90
    assert DataCopying.higher_is_better is None and copying.settings["tau"] == "20 / n_generated"
    json.dumps(copying.settings)


def test_without_training_items_the_metrics_say_so():
    for cls in (Copies, Authenticity, DataCopying):
        metric = cls(**PYRAMID)
        metric.update(smooth(4, seed=1), smooth(4, seed=2))
        result = metric.compute()
        assert math.isnan(result.value) and result.settings["status"] == "unavailable"
        assert result.settings["reason"] == NO_TRAIN and cls.needs_train


def test_bad_inputs():
    metric = Copies(**PYRAMID)
    with pytest.raises(BenchError, match="3 training images but 2 ids"):
        metric.update_train(smooth(3, seed=1), ["a", "b"])
    with pytest.raises(BenchError, match="outside the declared range"):
        metric.update_train(smooth(2, seed=1) + 2, ["a", "b"])
    metric.update_train(smooth(1, seed=1), ["a"])
    metric.update(smooth(2, seed=2), smooth(2, seed=3))
    too_few = metric.compute()
    assert math.isnan(too_few.value) and too_few.settings["status"] == "unavailable"
    assert "at least 2 training items and 1 generated item, got 1 and 2" in too_few.settings["reason"]
    broken = Copies(**PYRAMID)
    broken.update(smooth(2, seed=2), smooth(2, seed=3))
    broken.update_train(smooth(3, seed=1), ["a", "b", "c"])
    broken._sets["train"][0][0][1, 4] = np.nan  # as a broken extractor would give
    with pytest.raises(BenchError, match="train features contain NaN or Inf"):
        broken.compute()
    for cls, options, match in [
        (Copies, {"percentile": 101}, "percentile must be a number in"),
        (DataCopying, {"cells": 0}, "cells must be an integer >= 1"),
        (DataCopying, {"tau": 1.5}, "tau must be a number in"),
        (Authenticity, {"chunk_size": -1}, "chunk_size must be a positive integer"),
    ]:
        with pytest.raises(BenchError, match=match):
            cls(**PYRAMID, **options)
    few = fed(DataCopying, smooth(2, seed=6), smooth(3, seed=7)).compute()
    assert math.isnan(few.value) and "3 cells need at least 3 training items" in few.settings["reason"]


def test_streaming_reset_pickle_and_settings():
    train, fake = planted()
    one = fed(Authenticity, train, fake)
    split = Authenticity(**PYRAMID)
    for part in fake.split(9):
        split.update(part, part)
    split.update_train(train, [f"train_{i}" for i in range(len(train))])
    assert split.compute().value == one.compute().value
    json.dumps(one.settings())
    pickle.loads(pickle.dumps(one)).compute()
    one.reset()
    assert one.train_ids == [] and math.isnan(one.compute().value)
    assert isinstance(one, MetricPlugin) and bench_metrics() == [Copies, Authenticity, DataCopying]


def test_volumes_are_compared_per_plane():
    train = smooth(20, seed=8, size=10, dims=3)
    fake = smooth(12, seed=9, size=10, dims=3)
    fake[:3] = train[:3]
    result = fed(Copies, train, fake).compute()
    assert list(result.components) == list(planes.PLANES)
    for plane, cut in zip(planes.PLANES, planes.plane_slices(train, 3), strict=True):
        index = planes.PLANES.index(plane)
        flat = fed(Copies, cut, planes.plane_slices(fake, 3)[index]).compute()
        assert result.components[plane].value == flat.value and result.components[plane].per_item == flat.per_item
    assert result.value == pytest.approx(np.mean([c.value for c in result.components.values()]), abs=1e-15)
    assert result.per_item is None and "planes" in result.settings


def test_training_features_go_to_the_disk_cache():
    inception.clear_cache()
    metric = Copies(weights=RANDOM, feature_dims=64)
    metric.update_train(smooth(3, seed=10, size=16), ["a", "b", "c"])
    inception.clear_cache()  # a new process
    again = Copies(weights=RANDOM, feature_dims=64)
    again.update_train(smooth(3, seed=10, size=16), ["a", "b", "c"])
    assert inception.COUNTERS.disk == 3 and inception.COUNTERS.computed == 0
    inception.clear_cache()


class _Sampler(torch.nn.Module):
    """A model that samples exact copies of training images, then noise: what memorisation must catch."""

    capabilities = frozenset({SAMPLE})

    def __init__(self, train: torch.Tensor) -> None:
        super().__init__()
        self.train_images, self.drawn = train, 0

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        out = torch.rand(n, 1, 12, 12, generator=generator)
        copies = min(n, max(0, 4 - self.drawn))
        out[:copies] = self.train_images[self.drawn : self.drawn + copies]
        self.drawn += n
        return out * 2 - 1  # the dataset's range


class _Split(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, prefix: str) -> None:
        self.images, self.prefix = images, prefix

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"id": f"{self.prefix}{i}", "image": self.images[i] * 2 - 1}  # dataset range [-1, 1]


def evaluate(model, test, spec, tasks, metrics, settings, out_dir, train=None):
    """``evaluator.evaluate`` in either of its forms (evaluator.py is being restructured around ``EvalJob``)."""
    if hasattr(evaluator, "EvalJob"):
        return evaluator.evaluate(evaluator.EvalJob(model, spec, tasks, metrics, test, train), settings, out_dir)
    return evaluator.evaluate(model, test, spec, tasks, metrics, settings, out_dir, train=train)


def test_evaluator_feeds_the_training_split_to_sample_tasks(tmp_path: Path):
    train, test = smooth(20, seed=11), smooth(10, seed=12)
    spec = DataSpec(("image",), (1,), 2, (12, 12), (-1.0, 1.0))
    model = _Sampler(train)
    model.capabilities = frozenset({SAMPLE})
    tasks = tasks_for(model.capabilities, spec)
    metrics = {"copies": (Copies, PYRAMID), "data-copying": (DataCopying, {**PYRAMID, "cells": 1, "tau": 0.0})}
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, n_samples=10, save_images=False)
    outcome = evaluate(model, _Split(test, "t"), spec, tasks, metrics, settings, tmp_path, train=_Split(train, "tr"))
    rows = {r["metric"]: r for r in outcome.rows if r["task"] == "sample"}
    assert rows["copies"]["value"] == pytest.approx(0.4) and rows["copies"]["settings"]["n_train"] == 20
    pairs = rows["data-copying"]["settings"]["closest_pairs"]
    assert [p["train_id"] for p in pairs[:4]] == ["tr0", "tr1", "tr2", "tr3"] and pairs[0]["distance"] == 0.0
    assert rows["data-copying"]["higher_is_better"] is None
    without = evaluate(_Sampler(train), _Split(test, "t"), spec, tasks, metrics, settings, tmp_path)
    assert all(r["settings"]["reason"] == NO_TRAIN for r in without.rows if r["metric"] == "copies")


def test_per_sample_nearest_training_items_equal_brute_force():
    train, fake = planted()
    space = features.PyramidSpace()
    ft, ff = space(train, True), space(fake, False)
    gt, tt = distances(ff, ft), distances(ft, ft)
    np.fill_diagonal(tt, np.inf)
    for cls in (Copies, Authenticity):
        details = fed(cls, train, fake, chunk_size=7).compute().item_details
        assert len(details) == 30
        assert [d["train_id"] for d in details] == [f"train_{j}" for j in gt.argmin(axis=1)]
        assert [d["train_index"] for d in details] == gt.argmin(axis=1).tolist()
        np.testing.assert_allclose([d["distance"] for d in details], gt.min(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose([d["train_nn_distance"] for d in details], tt.min(axis=1)[gt.argmin(axis=1)],
                                   rtol=1e-12)  # fmt: skip
        assert [d["distance"] for d in details[:6]] == [0.0] * 6  # the planted copies
    json.dumps(details, allow_nan=False)


def test_per_sample_details_of_volumes_are_per_plane():
    train, fake = smooth(20, seed=8, size=10, dims=3), smooth(12, seed=9, size=10, dims=3)
    fake[:3] = train[:3]
    result = fed(Copies, train, fake).compute()
    assert result.item_details is None and len(result.components) == 3
    for part in result.components.values():  # every plane finds the copied volumes' own slices
        assert len(part.item_details) == 12
        copies = [(d["train_id"], d["distance"]) for d in part.item_details[:3]]
        assert copies == [(f"train_{j}", 0.0) for j in range(3)]
        assert all(d["distance"] > 0 for d in part.item_details[3:])


def test_evaluator_keeps_each_samples_nearest_training_item(tmp_path: Path):
    train, test = smooth(20, seed=11), smooth(10, seed=12)
    spec = DataSpec(("image",), (1,), 2, (12, 12), (-1.0, 1.0))
    model = _Sampler(train)
    metrics = {"copies": (Copies, PYRAMID), "data-copying": (DataCopying, {**PYRAMID, "cells": 1, "tau": 0.0})}
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, n_samples=10, save_images=False)
    tasks = tasks_for(model.capabilities, spec)
    outcome = evaluate(model, _Split(test, "t"), spec, tasks, metrics, settings, tmp_path, train=_Split(train, "tr"))
    samples = outcome.per_file["sample"]["copies"]["samples"]
    assert list(samples) == [f"sample_{j:05d}" for j in range(10)]
    # The model's first four samples are training images 0-3 (sample files sample_00000-3).
    assert [(s["train_id"], s["distance"]) for s in list(samples.values())[:4]] == [(f"tr{j}", 0.0) for j in range(4)]
    pairs = {r["metric"]: r for r in outcome.rows}["data-copying"]["settings"]["closest_pairs"]
    for p in pairs:  # the same nearest items as the pairs data-copying lists (same feature space)
        assert samples[f"sample_{p['generated_index']:05d}"]["distance"] == p["distance"]
    assert outcome.per_file["sample"]["copies"]["n"] == 10 and "per_file" not in outcome.per_file["sample"]["copies"]
    json.loads(json.dumps(outcome.per_file))


class _WrongDetails(Copies):
    """A metric plugin whose item details do not match the samples drawn."""

    name = "wrong-details"

    def compute(self):
        value = super().compute()
        value.item_details = value.item_details[:-1]
        return value


def test_evaluator_refuses_item_details_that_do_not_match_the_samples(tmp_path: Path):
    train, test = smooth(20, seed=11), smooth(10, seed=12)
    spec = DataSpec(("image",), (1,), 2, (12, 12), (-1.0, 1.0))
    model = _Sampler(train)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, n_samples=10, save_images=False)
    tasks = tasks_for(model.capabilities, spec)
    metrics = {"wrong-details": (_WrongDetails, PYRAMID)}
    try:
        outcome = evaluate(model, _Split(test, "t"), spec, tasks, metrics, settings, tmp_path, _Split(train, "tr"))
    except BenchError as exc:
        message = str(exc)
    else:  # the engine records a failed task instead of failing the cell
        message = outcome.failed["sample"]
    assert "wrong-details: 9 item details on task sample" in message and "(10)" in message


def test_evaluator_saves_the_training_images_nearest_to_the_closest_samples(tmp_path: Path):
    from PIL import Image

    train, test = smooth(20, seed=11), smooth(10, seed=12)
    spec = DataSpec(("image",), (1,), 2, (12, 12), (-1.0, 1.0))
    model = _Sampler(train)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, n_samples=10)
    tasks = tasks_for(model.capabilities, spec)
    outcome = evaluate(model, _Split(test, "t"), spec, tasks, {"copies": (Copies, PYRAMID)}, settings, tmp_path,
                       train=_Split(train, "tr"))  # fmt: skip
    samples = outcome.per_file["sample"]["copies"]["samples"]
    assert [samples[f"sample_{j:05d}"]["train_index"] for j in range(4)] == [0, 1, 2, 3]
    closest = sorted(samples.values(), key=lambda d: d["distance"])[:8]
    saved = sorted(p.stem for p in (tmp_path / "train_nearest").glob("*.png"))
    assert saved == sorted({d["train_id"] for d in closest})
    for j in range(4):  # the copied samples and their training images: the same pixels
        copy = np.asarray(Image.open(tmp_path / "sample" / f"sample_{j:05d}.png"))
        original = np.asarray(Image.open(tmp_path / "train_nearest" / f"tr{j}.png"))
        np.testing.assert_array_equal(original, np.round(train[j, 0].numpy() * 255).astype(np.uint8))
        np.testing.assert_array_equal(copy, original)


class _Shuffled(_Split):
    """A split whose items are not where their position says: the sample details point at other ids."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return item if self.order is None else {**item, "id": f"{self.prefix}{self.order[i]}"}

    order: list[int] | None = None


def test_saved_training_images_are_checked_against_their_ids(tmp_path: Path):
    train, test = smooth(20, seed=11), smooth(10, seed=12)
    spec = DataSpec(("image",), (1,), 2, (12, 12), (-1.0, 1.0))
    split = _Shuffled(train, "tr")

    class Renaming(Copies):
        def compute(self):
            split.order = list(reversed(range(20)))  # after the training pass: what is read back differs
            return super().compute()

    model = _Sampler(train)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, n_samples=10)
    tasks = tasks_for(model.capabilities, spec)
    outcome = evaluate(model, _Split(test, "t"), spec, tasks, {"copies": (Renaming, PYRAMID)}, settings, tmp_path,
                       train=split)  # fmt: skip
    assert not list((tmp_path / "train_nearest").glob("*.png"))
    assert any("training item 0 is 'tr19', not 'tr0'" in note for note in outcome.notes)
