"""Read speed of every dataset loader, in samples/s, on data written by each plugin's ``make_embedded``.

One round reads every item of the train split once, in the main process (``DataLoader``
workers multiply this per worker). Run with
``python -m pytest tests/benchmarks/test_loader_speed.py --benchmark-enable``; under the
project's default ``--benchmark-disable`` each body runs once as a plain test. Timing is
``bench_core.timing.benchmark_throughput``'s (rounds after one warm-up); ``extra_info`` holds
``samples_per_s``, the loader and its options.

biobank-flair is timed without and with its volume cache (warmed before timing, so the rounds
show epochs after the first). The embedded 48x56x48 ``.nii`` volumes are small; with
``--benchmark-enable`` the same volumes are also resampled to the real 181x217x181 grid and
gzip-compressed (``ukb-size``), where decoding dominates and the cache matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from bench_core.timing import Timing, benchmark_throughput
from bench_plugins.datasets.flair import BiobankFlair
from bench_plugins.datasets.gold import Gold
from bench_plugins.datasets.hipmri import HipMRI
from bench_plugins.datasets.oasis import Oasis
from bench_plugins.datasets.sent import Sent

N = 8  # embedded items per plugin: 6 train, 1 val, 1 test
UKB_GRID = (181, 217, 181)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("loaders")
    out = {}
    for cls in (Sent, Gold, HipMRI, Oasis, BiobankFlair):
        out[cls.name] = base / cls.name
        cls.make_embedded(out[cls.name], n=N, seed=0)
    return out


@pytest.fixture(scope="module")
def ukb_root(roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded FLAIR volumes at the real 181x217x181 grid, gzip-compressed (a few seconds to write)."""
    root = tmp_path_factory.mktemp("ukb-size")
    for path in sorted(roots["biobank-flair"].glob("*.nii")):
        image = nib.load(path)
        volume = np.asarray(image.dataobj)
        big = ndimage.zoom(volume, np.array(UKB_GRID) / volume.shape, order=1).astype(np.float32)
        nib.save(nib.Nifti1Image(big, np.eye(4)), root / f"{path.name}.gz")
    return root


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))


def _read_split(benchmark: Any, plugin: Any, loader: str, **extra: Any) -> float:
    data = plugin.split("train")
    keys = plugin.spec().modalities

    def one_pass() -> None:
        for index in range(len(data)):
            item = data[index]
            assert all(isinstance(item[k], torch.Tensor) for k in keys)

    rate = benchmark_throughput(
        benchmark, one_pass, items=len(data), timing=Timing("cpu"), unit="samples", loader=loader, **extra
    )
    print(f"{loader}: {rate:.1f} samples/s")
    return rate


CASES = [
    ("sent", Sent, "sent", {}),
    ("gold", Gold, "gold", {}),
    ("hipmri", HipMRI, "hipmri", {}),
    ("oasis-png", Oasis, "oasis", {"layout": "png"}),
    ("oasis-nifti", Oasis, "biobank-flair", {"layout": "nifti"}),  # middle slices of the 3D volumes
]


@pytest.mark.benchmark(group="loaders-2d")
@pytest.mark.parametrize(("loader", "cls", "data", "options"), CASES, ids=[c[0] for c in CASES])
def test_2d_loader_speed(benchmark, roots, loader, cls, data, options):
    rate = _read_split(benchmark, cls(roots[data], **options), loader, options=options)
    assert rate > 0


def _warm(plugin: BiobankFlair) -> None:
    """Read the train split once, so the volume cache holds it (what every epoch after the first sees)."""
    data = plugin.split("train")
    for index in range(len(data)):
        data[index]


@pytest.mark.benchmark(group="loaders-3d")
@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_flair_loader_speed(benchmark, roots, resolution, cache):
    plugin = BiobankFlair(roots["biobank-flair"], resolution=resolution, cache=cache)
    if cache:
        _warm(plugin)
    _read_split(benchmark, plugin, f"biobank-flair-{'cached' if cache else 'uncached'}", resolution=resolution)


@pytest.mark.benchmark(group="loaders-3d-ukb-size")
@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_flair_ukb_size_loader_speed(benchmark, request, cache):
    if benchmark.disabled:
        pytest.skip("181x217x181 volumes are written only with --benchmark-enable")
    plugin = BiobankFlair(request.getfixturevalue("ukb_root"), resolution=64, cache=cache)
    if cache:
        _warm(plugin)
    name = f"biobank-flair-ukb-size-{'cached' if cache else 'uncached'}"
    _read_split(benchmark, plugin, name, resolution=64, grid="181x217x181 .nii.gz")
