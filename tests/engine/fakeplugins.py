"""Small, fast plugins used by the engine tests (loaded with `-p fakeplugins` or directly).

They are real implementations, only tiny: a .npy image dataset that can synthesise
itself, a conv autoencoder (optionally paired, optionally diverging), a 3D-only model,
a paired mean-absolute-error metric and a distribution metric comparing means.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench_core.api import (
    API_VERSION,
    RECONSTRUCT,
    SAMPLE,
    TRANSLATE,
    DataError,
    DataSpec,
    MetricValue,
    OptimizerSpec,
    TrainingStage,
)
from bench_core.hookspecs import hookimpl

SIZES = {"train": 48, "val": 8, "test": 12}


class ToyData:
    """Smooth random 16x16 images x in [-1, 1] stored as one .npy file per item in {split}/ folders.

    Paired: A = x and B = -x, both in [-1, 1]; with ``ct_mr``, A = 2000 x + 1000 in "Hounsfield
    units" [-1000, 3000] and B = (1 - x) / 2 in [0, 1] (one value range per modality).
    """

    name = "toy"
    version = "1.0"
    api_version = API_VERSION
    obtain = "make it with `bench data make toy DIR`"

    def __init__(self, root: Path, paired: bool = False, ct_mr: bool = False):
        self.root = Path(root)
        self.paired = paired or ct_mr
        self.ct_mr = ct_mr
        for split in SIZES:
            if not (self.root / split).is_dir():
                raise DataError(f"toy: missing split folder {self.root / split}")

    def spec(self) -> DataSpec:
        mods = ("A", "B") if self.paired else ("image",)
        sizes = {s: len(list((self.root / s).glob("*.npy"))) for s in SIZES}
        if self.ct_mr:
            return DataSpec(mods, (1, 1), 2, (16, 16), None, sizes, "toy CT/MR", ranges=((-1000.0, 3000.0), (0.0, 1.0)))
        return DataSpec(mods, (1,) * len(mods), 2, (16, 16), (-1.0, 1.0), sizes, "toy blobs")

    def split(self, name: str):
        return _ToySplit(sorted((self.root / name).glob("*.npy")), self.paired, self.ct_mr)

    def fingerprint(self) -> str:
        files = sorted(self.root.rglob("*.npy"))
        return f"{len(files)}-{sum(f.stat().st_size for f in files)}"

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:16, 0:16] / 15.0
        for split, count in SIZES.items():
            (root / split).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                a, b, c = rng.uniform(-1, 1, 3)
                img = np.tanh(a * xx + b * yy + c * np.sin(6 * xx * (1 + a))).astype(np.float32)
                np.save(root / split / f"item_{i:03d}.npy", img)


class _ToySplit(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], paired: bool, ct_mr: bool = False):
        self.files, self.paired, self.ct_mr = files, paired, ct_mr

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        x = torch.from_numpy(np.load(self.files[i]))[None]
        if self.ct_mr:
            return {"A": 2000 * x + 1000, "B": (1 - x) / 2, "id": self.files[i].stem}
        if self.paired:
            return {"A": x, "B": -x, "id": self.files[i].stem}
        return {"image": x, "id": self.files[i].stem}


class ToyAE(nn.Module):
    """A small conv autoencoder; with `nan_loss: true` its loss is NaN (for failure tests), with
    `constant: true` its reconstructions are all zero (for the collapse and baseline flags)."""

    name = "toy-ae"
    version = "1.0"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT, TRANSLATE, SAMPLE})
    dims = frozenset({2})
    configs = {
        "small": {"width": 8, "lr": 3e-3, "nan_loss": False, "steps": 30, "sleep": 0.0, "crash_rank": -1,
                  "constant": False}
    }  # fmt: skip
    default_config = "small"

    def __init__(self, config, spec: DataSpec):
        super().__init__()
        self.config, self.spec = dict(config), spec
        w = config["width"]
        self.enc = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1))
        self.dec = nn.Sequential(nn.ReLU(), nn.Conv2d(w, 1, 3, padding=1))
        self.flip = nn.Parameter(torch.zeros(1))

    @classmethod
    def incompatibility(cls, spec: DataSpec) -> str | None:
        return None if spec.shape == (16, 16) else f"toy-ae needs 16x16 images, got {spec.shape}"

    def forward(self, x):
        return self.dec(self.enc(x))

    def reconstruct(self, x, modality, temperature=None):
        if self.config["constant"]:  # a collapsed model: the same image whatever the input
            return torch.zeros_like(x)
        # A visible, deterministic effect of temperature for the evaluation-variant tests.
        return self(x) + (0.1 * temperature if temperature is not None else 0.0)

    def translate(self, x, source, target):
        return self(x) * torch.tanh(self.flip * 10)

    def sample(self, n, temperature=1.0, generator=None):
        z = torch.randn((n, 1, 16, 16), generator=generator).to(self.flip.device) * temperature
        return torch.tanh(self(z))

    def _loss(self, batch):
        if self.config["sleep"]:
            import time

            time.sleep(self.config["sleep"])
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
        if rank == self.config["crash_rank"]:
            raise RuntimeError(f"rank {rank} crashed on purpose")
        x = batch[self.spec.modalities[0]]
        loss = nn.functional.mse_loss(self(x), x)
        if self.spec.paired:
            loss = loss + nn.functional.mse_loss(self.translate(x, "A", "B"), batch["B"])
        if self.config["nan_loss"]:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}

    def stages(self):
        return [
            TrainingStage(
                "ae", self.parameters, self._loss, OptimizerSpec("adam", self.config["lr"]),
                default_steps=self.config["steps"], batch_size=8,
            )
        ]  # fmt: skip

    def evaluation_metrics(self, loader) -> dict[str, float]:
        return {"pid": float(os.getpid() > 0)}


class ToyRefuser(ToyAE):
    """Declares translation both ways but refuses B2A, as a one-way model written before ``tasks`` existed."""

    name = "toy-refuser"

    def translate(self, x, source, target):
        if source == "B":
            raise NotImplementedError("toy-refuser translates A to B only")
        return super().translate(x, source, target)


class ToyOneWay(ToyRefuser):
    """A one-way translator that says so: the engine never asks it for B2A."""

    name = "toy-oneway"
    tasks = frozenset({"A2A", "B2B", "A2B"})


class Toy3D(nn.Module):
    """A model that only handles volumes: pairing it with 2D data must be skipped."""

    name = "toy-3d"
    version = "1.0"
    api_version = API_VERSION
    capabilities = frozenset({RECONSTRUCT})
    dims = frozenset({3})
    configs = {"base": {}}
    default_config = "base"

    @classmethod
    def incompatibility(cls, spec):
        return None


class MAE:
    """Mean absolute error per item (a paired metric)."""

    name = "toy-mae"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = False
    kind = "paired"
    dims = frozenset({2, 3})

    def __init__(self, data_range: float = 1.0, dims: int = 2):
        self.data_range, self.values = data_range, []

    def update(self, pred, target):
        v = (pred - target).abs().flatten(1).mean(1)
        self.values.append(v)
        return v

    def compute(self) -> MetricValue:
        v = torch.cat(self.values).double()
        return MetricValue(float(v.mean()), float(v.std()) if len(v) > 1 else None, len(v), self.settings())

    def reset(self):
        self.values = []

    def settings(self):
        return {"data_range": self.data_range}


class MeanGap:
    """|mean(pred) - mean(target)| over the whole sets (a distribution metric)."""

    name = "mean-gap"
    version = "1.0"
    api_version = API_VERSION
    higher_is_better = False
    kind = "distribution"
    dims = frozenset({2})

    def __init__(self, data_range: float = 1.0, dims: int = 2):
        self.reset()

    def update(self, pred, target):
        self.ps += float(pred.sum())
        self.pn += pred.numel()
        self.ts += float(target.sum())
        self.tn += target.numel()

    def compute(self) -> MetricValue:
        return MetricValue(abs(self.ps / self.pn - self.ts / self.tn), None, self.pn, self.settings())

    def reset(self):
        self.ps = self.ts = 0.0
        self.pn = self.tn = 0

    def settings(self):
        return {}


@hookimpl
def bench_models():
    return [ToyAE, Toy3D, ToyRefuser, ToyOneWay]


@hookimpl
def bench_datasets():
    return [ToyData]


@hookimpl
def bench_metrics():
    return [MAE, MeanGap]
