"""Conformance kit for plugin authors: call these from your own tests.

>>> from bench_core.testing import check_model_plugin, check_dataset_plugin, check_metric_plugin
>>> check_model_plugin(MyModel, config="tiny")          # doctest: +SKIP
>>> check_dataset_plugin(MyData, tmp_path)              # doctest: +SKIP
>>> check_metric_plugin(MyMetric)                       # doctest: +SKIP

Each check raises ``AssertionError`` with a message saying which part of the contract
(see :mod:`bench_core.api`) the plugin breaks. Every built-in plugin passes them in this
project's own test suite.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

from bench_core.api import API_VERSION, CAPABILITIES, RECONSTRUCT, SAMPLE, SPLITS, TRANSLATE, DataSpec, MetricValue
from bench_core.plugins import incompatibility_of, tasks_problem

# Specs tried, in order, when the caller gives none: the first the model accepts is used.
CANDIDATE_SPECS = (
    DataSpec(("image",), (1,), 2, (32, 32), (-1.0, 1.0), {"train": 8, "val": 2, "test": 4}, "conformance 2D"),
    DataSpec(("A", "B"), (1, 1), 2, (32, 32), (-1.0, 1.0), {"train": 8, "val": 2, "test": 4}, "conformance pair"),
    DataSpec(("image",), (1,), 3, (16, 16, 16), (-1.0, 1.0), {"train": 8, "val": 2, "test": 4}, "conformance 3D"),
)


def _check_common(cls: type, kind: str, attrs: tuple[str, ...]) -> None:
    missing = [a for a in ("name", "version", "api_version", *attrs) if not hasattr(cls, a)]
    assert not missing, f"{kind} plugin {cls.__name__} lacks class attributes: {', '.join(missing)}"
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__}.name must be a non-empty string"
    assert cls.api_version == API_VERSION, f"{cls.name}: api_version {cls.api_version}, engine has {API_VERSION}"


def _fake_batch(spec: DataSpec, n: int, seed: int) -> dict[str, Any]:
    """Smooth random images in each modality's value range (smooth so models can learn them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {"id": [f"item{seed}_{i}" for i in range(n)]}
    for modality, channels in zip(spec.modalities, spec.channels, strict=True):
        lo, hi = spec.range_of(modality)
        coarse = torch.rand((n, channels, *(max(2, s // 4) for s in spec.shape)), generator=g)
        mode = "bilinear" if spec.dims == 2 else "trilinear"
        x = torch.nn.functional.interpolate(coarse, size=spec.shape, mode=mode, align_corners=False)
        batch[modality] = lo + (hi - lo) * x
    return batch


class _ListDataset:
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _items(spec: DataSpec, n: int, seed: int) -> list[dict[str, Any]]:
    batch = _fake_batch(spec, n, seed)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def check_model_plugin(cls: type, config: str | None = None, spec: DataSpec | None = None, steps: int = 2) -> None:
    """Check a model plugin class against the model contract.

    Builds the model from ``config`` (default: the class's default config) for ``spec``
    (default: the first of :data:`CANDIDATE_SPECS` it accepts), and checks: declared
    attributes, determinism under a seed, every training stage running ``steps`` steps
    through the engine's own loop with finite losses, output shapes and finiteness of each
    declared capability, and a safetensors state round trip giving identical outputs.
    """
    import torch

    from bench_core.checkpoints import load_weights, save_weights
    from bench_core.torchutil import seed_everything

    cfg, spec = _model_config_and_spec(cls, config, spec)
    seed_everything(0)
    model = cls(cfg, spec)
    seed_everything(0)
    twin = cls(cfg, spec)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{cls.name}: two builds under one seed differ at {k!r}"
    with tempfile.TemporaryDirectory() as tmp:
        _check_stages(model, cls, spec, steps, Path(tmp))
        model.eval()
        batch = _fake_batch(spec, 3, seed=2)
        outputs = _capability_outputs(model, cls, spec, batch)
        path = Path(tmp) / "ck"
        save_weights(model, path, {})
        seed_everything(0)
        fresh = cls(cfg, spec)
        load_weights(fresh, path / "model.safetensors")
        fresh.eval()
        again = _capability_outputs(fresh, cls, spec, batch)
    for task, out in outputs.items():
        if task == SAMPLE:
            continue  # sampling draws new noise; its shape was checked
        assert torch.allclose(out, again[task], atol=1e-5), f"{cls.name}: {task} differs after a state round trip"


def _model_config_and_spec(cls: type, config: str | None, spec: DataSpec | None) -> tuple[dict[str, Any], DataSpec]:
    """Check a model class's declared attributes; return the config to build and a spec it accepts."""
    _check_common(cls, "model", ("capabilities", "dims", "configs", "default_config"))
    assert set(cls.capabilities) <= CAPABILITIES, (
        f"{cls.name}: unknown capabilities {set(cls.capabilities) - CAPABILITIES}"
    )
    assert set(cls.dims) <= {2, 3} and cls.dims, f"{cls.name}: dims must be a non-empty subset of {{2, 3}}"
    assert cls.default_config in cls.configs, f"{cls.name}: default_config {cls.default_config!r} not in configs"
    config_name = config or cls.default_config
    assert config_name in cls.configs, f"{cls.name}: no config {config_name!r}"
    assert (problem := tasks_problem(cls)) is None, problem
    config = dict(cls.configs[config_name])
    if spec is None:
        accepted = [s for s in CANDIDATE_SPECS if s.dims in cls.dims and incompatibility_of(cls, s, config) is None]
        assert accepted, f"{cls.name}: accepts none of the conformance specs; pass spec= explicitly"
        spec = accepted[0]
    reason = incompatibility_of(cls, spec, config)
    assert reason is None, f"{cls.name}: refuses the given spec: {reason}"
    return config, spec


def _check_stages(model: Any, cls: type, spec: DataSpec, steps: int, tmp: Path) -> None:
    """Every stage of ``model`` runs ``steps`` steps through the engine's loop, none skipped, losses finite."""
    import torch

    from bench_core.trainer import TrainSettings, run_stage

    stages = model.stages()
    assert stages, f"{cls.name}: stages() returned no training stage"
    names = [s.name for s in stages]
    assert len(set(names)) == len(names), f"{cls.name}: stage names repeat: {names}"
    train = _ListDataset(_items(spec, 8, seed=1))
    for i, stage in enumerate(stages):
        settings = TrainSettings(device=torch.device("cpu"), steps=steps, batch_size=4, progress=False)
        report = run_stage(model, stage, train, settings, tmp / f"{i}.pt")
        assert report.steps == steps, f"{cls.name}: stage {stage.name} ran {report.steps} of {steps} steps"
        assert report.skipped == 0, f"{cls.name}: stage {stage.name} skipped {report.skipped} updates"
        losses = [p["loss"] for p in report.curve]
        assert losses and all(math.isfinite(v) for v in losses), f"{cls.name}: stage {stage.name} losses {losses}"


def _capability_outputs(model, cls, spec: DataSpec, batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    from bench_core.evaluator import model_tasks

    out = {}
    with torch.no_grad():
        for task in model_tasks(cls, spec):  # the tasks the engine would evaluate: declared ones only
            if task.kind == RECONSTRUCT:
                y, what, n = model.reconstruct(batch[task.source], task.source), f"reconstruct({task.source})", 3
            elif task.kind == TRANSLATE:
                y, n = model.translate(batch[task.source], task.source, task.target), 3
                what = f"translate({task.source}->{task.target})"
            else:
                y, what, n = model.sample(2, temperature=1.0, generator=torch.Generator().manual_seed(0)), SAMPLE, 2
            _check_output(cls, what, y, (n, spec.channels_of(task.target), *spec.shape))
            out[task.name] = y
    return out


def _check_output(cls, what: str, y, shape: tuple[int, ...]) -> None:
    import torch

    assert torch.is_tensor(y), f"{cls.name}: {what} returned {type(y).__name__}, expected a tensor"
    assert tuple(y.shape) == shape, f"{cls.name}: {what} shape {tuple(y.shape)}, expected {shape}"
    assert torch.isfinite(y).all(), f"{cls.name}: {what} has NaN or Inf values"


def check_dataset_plugin(cls: type, root: Path, make: bool = True, **options: Any) -> None:
    """Check a dataset plugin class against the dataset contract on the data in ``root``.

    With ``make=True`` and a ``make_embedded`` classmethod, ``root`` is first filled
    with a small embedded dataset. Checks the spec, split sizes, item keys, shapes,
    dtypes and value range, sorted deterministic order, a stable fingerprint, and that
    splits pickle (DataLoader workers) and collate.
    """
    import torch
    from torch.utils.data import DataLoader

    _check_common(cls, "dataset", ())
    root = Path(root)
    if make and hasattr(cls, "make_embedded"):
        cls.make_embedded(root, n=12, seed=0)
    data = cls(root, **options)
    spec = data.spec()
    assert isinstance(spec, DataSpec), f"{cls.name}: spec() returned {type(spec).__name__}"
    assert len(spec.modalities) in (1, 2) and len(spec.channels) == len(spec.modalities), f"{cls.name}: bad spec {spec}"
    assert spec.dims in (2, 3) and len(spec.shape) == spec.dims, f"{cls.name}: shape {spec.shape} vs dims {spec.dims}"
    fingerprint = data.fingerprint()
    assert fingerprint == cls(root, **options).fingerprint(), f"{cls.name}: fingerprint is not stable"
    for name in SPLITS:
        split = data.split(name)
        n = len(split)
        if name in spec.split_sizes:
            assert n == spec.split_sizes[name], (
                f"{cls.name}: split {name} has {n} items, spec says {spec.split_sizes[name]}"
            )
        ids = []
        for i in range(min(n, 4)):
            item = split[i]
            assert "id" in item and isinstance(item["id"], str), f"{cls.name}: item {i} of {name} has no string id"
            ids.append(item["id"])
            for modality, channels in zip(spec.modalities, spec.channels, strict=True):
                x = item.get(modality)
                assert torch.is_tensor(x), f"{cls.name}: item {item['id']} lacks tensor {modality!r}"
                assert tuple(x.shape) == (channels, *spec.shape), (
                    f"{cls.name}: {item['id']}[{modality}] shape {tuple(x.shape)}, expected {(channels, *spec.shape)}"
                )
                assert x.dtype == torch.float32, f"{cls.name}: {item['id']}[{modality}] dtype {x.dtype}"
                assert torch.isfinite(x).all(), f"{cls.name}: {item['id']}[{modality}] has NaN/Inf"
                lo, hi = spec.range_of(modality)
                assert lo - 1e-5 <= float(x.min()) and float(x.max()) <= hi + 1e-5, (
                    f"{cls.name}: {item['id']}[{modality}] values [{float(x.min())}, {float(x.max())}] "
                    f"outside the declared range {(lo, hi)} of {modality}"
                )
        assert ids == [data.split(name)[i]["id"] for i in range(len(ids))], (
            f"{cls.name}: {name} order not deterministic"
        )
        buffer = io.BytesIO()
        pickle.dump(split, buffer)
        if n:
            batch = next(iter(DataLoader(split, batch_size=2)))
            assert batch[spec.modalities[0]].shape[0] == min(2, n), f"{cls.name}: {name} does not collate"


def _check_metric_value(cls: type, metric: Any, whole: Any) -> None:
    """A computed value's type, finiteness and JSON settings; no ``dims`` set on the instance."""
    assert "dims" not in getattr(metric, "__dict__", {}), (
        f"{cls.name}: sets self.dims on the instance, hiding the class attribute dims (the dims the engine may "
        "build it for); keep the dims it was built for under another name (PairedMetric's spatial_dims)"
    )
    assert isinstance(whole, MetricValue), f"{cls.name}: compute() returned {type(whole).__name__}"
    assert math.isfinite(whole.value), f"{cls.name}: value {whole.value} is not finite"
    json.dumps(whole.settings)
    json.dumps(metric.settings())


def check_metric_plugin(cls: type, dims: int | None = None, **options: Any) -> None:
    """Check a metric plugin class against the metric contract (update / compute / reset).

    Checks attributes, that identical inputs score at the optimum side of a perturbed
    pair, that two updates equal one update of the concatenated batch, that ``reset``
    forgets, that settings are JSON-serialisable, and that the metric pickles. A metric
    that declares ``needs_train`` gets a separate batch of training images through
    ``update_train`` before it computes, as the engine streams the training split.
    """
    import torch

    _check_common(cls, "metric", ("higher_is_better", "kind", "dims"))
    assert cls.kind in ("paired", "distribution"), f"{cls.name}: kind must be 'paired' or 'distribution'"
    dims = dims or min(cls.dims)
    shape = (32, 32) if dims == 2 else (16, 16, 16)
    spec = DataSpec(("image",), (1,), dims, shape, (0.0, 1.0))
    n = 12  # more than the k of the k-NN metrics (k + 1 neighbours within a set)
    x = _fake_batch(spec, n, seed=3)["image"]
    y = (x + 0.1 * torch.sin(torch.arange(x.numel()).view_as(x).float())).clamp(0, 1)
    train = _fake_batch(spec, n, seed=5)["image"]
    needs_train = bool(getattr(cls, "needs_train", False))
    if needs_train:
        assert callable(getattr(cls, "update_train", None)), f"{cls.name}: needs_train without update_train()"

    def fed(metric):
        if needs_train:
            metric.update_train(train, [f"train_{i}" for i in range(n)])
        return metric

    def run(batches):
        metric = fed(cls(data_range=1.0, dims=dims, **options))
        per_item = [metric.update(p, t) for p, t in batches]
        return metric, metric.compute(), per_item

    metric, whole, per_item = run([(y, x)])
    _check_metric_value(cls, metric, whole)
    half = n // 2
    _, split, _ = run([(y[:half], x[:half]), (y[half:], x[half:])])
    assert math.isclose(whole.value, split.value, rel_tol=1e-4, abs_tol=1e-6), (
        f"{cls.name}: one update gives {whole.value}, two updates of halves give {split.value}"
    )
    if cls.kind == "paired":
        assert per_item[0] is not None and tuple(per_item[0].shape) == (n,), (
            f"{cls.name}: update must return (N,) values"
        )
        assert whole.n == n, f"{cls.name}: n is {whole.n} after {n} items"
        _, perfect, _ = run([(x, x)])
        better = perfect.value >= whole.value if cls.higher_is_better else perfect.value <= whole.value
        assert better, f"{cls.name}: identical images score {perfect.value}, perturbed {whole.value}"
    metric.reset()
    fed(metric).update(x, x)
    after_reset = metric.compute()
    _, fresh, _ = run([(x, x)])
    assert math.isclose(after_reset.value, fresh.value, rel_tol=1e-6, abs_tol=1e-9), f"{cls.name}: reset() kept state"
    pickle.dumps(cls(data_range=1.0, dims=dims, **options))
