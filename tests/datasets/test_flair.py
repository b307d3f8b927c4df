"""The ``biobank-flair`` dataset plugin: 3D resize and normalisation by hand, embedded round trip, bad inputs."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench_core.api import SPLITS, DataError, DatasetPlugin
from bench_plugins.datasets import flair
from bench_plugins.datasets.flair import BiobankFlair, normalise_volume, resize_volume, split_files

N = 8


def _nii(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _blob(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A zero-background ellipsoid of random positive intensities, like a skull-stripped volume."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.6
    return (inside * np.random.default_rng(seed).uniform(100, 400, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flair") / "ukb"
    BiobankFlair.make_embedded(root, n=N, seed=0)
    return root


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "ukb"
    for index in range(4):
        _nii(root / f"100000{index}_20253_2_0_flair.nii", _blob((24, 28, 24), index))
    _nii(root / "1000009_20253_2_0_flair.nii.gz", _blob((20, 20, 20), 9)[..., None])  # 4D with one volume
    (root / "1000000_20253_2_0.zip").write_bytes(b"decoy")
    (root / "readme.txt").write_text("decoy")
    return root


def test_resize_area_downsampling_by_hand() -> None:
    volume = torch.arange(64, dtype=torch.float32).reshape(1, 4, 4, 4)
    out = resize_volume(volume, 2)
    blocks = volume.reshape(1, 2, 2, 2, 2, 2, 2).mean(dim=(2, 4, 6))
    torch.testing.assert_close(out, blocks)
    assert out[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5, 16, 17, 20, 21]))


def test_resize_upsamples_trilinearly_and_mixes_per_axis() -> None:
    small = torch.rand(1, 2, 3, 2)
    expected = F.interpolate(small[None], size=(4, 4, 4), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_volume(small, 4), expected)
    mixed = torch.rand(1, 8, 2, 8)
    area = F.interpolate(mixed[None], size=(4, 2, 4), mode="area")
    expected = F.interpolate(area, size=(4, 4, 4), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_volume(mixed, 4), expected)
    assert resize_volume(mixed[:, :4, :4, :4], 4).shape == (1, 4, 4, 4)


def test_normalise_clamps_percentiles_then_rescales_by_hand() -> None:
    values = np.concatenate([np.zeros(500), np.linspace(10, 20, 1499), [1e6]]).astype(np.float32)
    volume = torch.from_numpy(values.reshape(1, 10, 10, 20))
    out = normalise_volume(volume).numpy().ravel()
    low, high = np.percentile(values, [0.05, 99.95])
    clamped = np.clip(values, low, high)
    z = (clamped - clamped.mean()) / clamped.std()  # the source's z-score ...
    expected = 2 * (z - z.min()) / (z.max() - z.min()) - 1  # ... then ScaleIntensity to [-1, 1]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[-1] == 1.0 and out[-2] < 1.0  # the outlier is clamped, not stretched to
    assert (normalise_volume(torch.full((1, 2, 2, 2), 5.0)) == -1.0).all()


def test_split_is_seeded_held_out_test_then_95_5(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:07d}_20253_2_0_flair.nii" for i in range(40)]
    parts = split_files(files)
    assert {k: len(v) for k, v in parts.items()} == {"train": 36, "val": 2, "test": 2}
    assert sorted(sum(parts.values(), [])) == files and split_files(files[::-1]) == parts
    rest = sorted(set(files) - set(parts["test"]))
    assert parts["train"] == rest[:36] and parts["val"] == rest[36:]
    assert {k: len(v) for k, v in split_files(files[:3]).items()} == {"train": 1, "val": 1, "test": 1}


def test_embedded_round_trip(embedded: Path) -> None:
    plugin = BiobankFlair(embedded)
    spec = plugin.spec()
    assert spec.dims == 3 and spec.shape == (32, 32, 32) and spec.channels == (1,)
    assert spec.split_sizes == {"train": 6, "val": 1, "test": 1} and spec.value_range == (-1.0, 1.0)
    seen = []
    for split in SPLITS:
        data = plugin.split(split)
        for index in range(len(data)):
            item = data[index]
            assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
            assert item["image"].min() == -1.0 and item["image"].max() == 1.0
            seen.append(item["id"])
    assert sorted(seen) == [f"{1000001 + i}_20253_2_0_flair" for i in range(N)]
    item = BiobankFlair(embedded, resolution=64).split("test")[0]
    assert item["image"].shape == (1, 64, 64, 64)


def test_embedded_files_match_real_format(embedded: Path) -> None:
    for path in embedded.iterdir():
        assert path.name.endswith("_20253_2_0_flair.nii")
        image = nib.load(path)
        volume = np.asarray(image.dataobj)
        assert volume.shape == (48, 56, 48) and volume.dtype == np.float32
        assert np.allclose(np.diag(image.affine)[:3], 217 / 56)
        # Skull-stripped: zero corners, a brain of plausible size; lesions make the top percentile.
        assert volume[0, 0, 0] == 0 and 0.1 < np.mean(volume > 0) < 0.6
        inside = volume[volume > 0]
        assert 200 < np.median(inside) < 800 and inside.max() < 2000


def test_embedded_is_deterministic(embedded: Path, tmp_path: Path) -> None:
    BiobankFlair.make_embedded(tmp_path / "same", n=3, seed=0)
    for path in (tmp_path / "same").iterdir():
        assert path.read_bytes() == (embedded / path.name).read_bytes()
    shutil.copytree(embedded, tmp_path / "copy")
    assert BiobankFlair(tmp_path / "copy").fingerprint() == BiobankFlair(embedded).fingerprint()
    assert BiobankFlair(tmp_path / "same").fingerprint() != BiobankFlair(embedded).fingerprint()
    BiobankFlair.make_embedded(tmp_path / "other", n=3, seed=1)
    assert BiobankFlair(tmp_path / "other").fingerprint() != BiobankFlair(tmp_path / "same").fingerprint()


def test_fixture_folder_glob_and_4d(fixture_root: Path) -> None:
    plugin = BiobankFlair(fixture_root)
    files = sum((list(plugin.split(s).files) for s in SPLITS), [])
    assert sorted(p.name for p in files) == sorted(p.name for p in fixture_root.glob("*.nii*") if "flair" in p.name)
    data = plugin.split("train")
    batch = next(iter(DataLoader(pickle.loads(pickle.dumps(data)), batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32, 32)
    four_d = [s for s in SPLITS if any(p.name.endswith(".nii.gz") for p in plugin.split(s).files)][0]
    ids = [plugin.split(four_d)[i]["id"] for i in range(len(plugin.split(four_d)))]
    assert "1000009_20253_2_0_flair" in ids


def test_bad_volumes_name_the_file(fixture_root: Path) -> None:
    plugin = BiobankFlair(fixture_root)
    path = plugin.split("train").files[0]
    volume = _blob((24, 28, 24))
    volume[3, 4, 5] = np.inf
    _nii(path, volume)
    with pytest.raises(DataError, match="contains NaN or Inf") as info:
        plugin.split("train")[0]
    assert str(path) in str(info.value)
    _nii(path, np.zeros((24, 28), np.float32))
    with pytest.raises(DataError, match=r"expected a 3D volume, got shape \(24, 28\)"):
        plugin.split("train")[0]
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="cannot read NIfTI file") as info:
        plugin.split("train")[0]
    assert str(path) in str(info.value)


def test_bad_options_and_folders(fixture_root: Path, tmp_path: Path) -> None:
    for resolution in (48, True, "32"):
        with pytest.raises(DataError, match="resolution must be one of 32, 64, 128"):
            BiobankFlair(fixture_root, resolution=resolution)
    with pytest.raises(DataError, match=r"unknown option 'size'; valid options: cache, resolution"):
        BiobankFlair(fixture_root, size=[32, 32])
    with pytest.raises(DataError, match="nowhere does not exist"):
        BiobankFlair(tmp_path / "nowhere")
    with pytest.raises(DataError, match="holds 0 NIfTI volumes, need at least 3"):
        BiobankFlair(tmp_path)
    with pytest.raises(DataError, match="unknown split 'validation'"):
        BiobankFlair(fixture_root).split("validation")
    with pytest.raises(DataError, match="at least 3 items"):
        BiobankFlair.make_embedded(tmp_path / "tiny", n=2)


def test_registration(fixture_root: Path) -> None:
    assert flair.bench_datasets() == [BiobankFlair] and BiobankFlair.name == "biobank-flair"
    assert isinstance(BiobankFlair(fixture_root), DatasetPlugin)
    assert "application" in BiobankFlair.obtain


def test_fingerprint_sees_edits_behind_the_background(fixture_root: Path) -> None:
    path = fixture_root / "1000002_20253_2_0_flair.nii"
    volume = np.zeros((40, 40, 40), np.float32)  # 256 KB; NIfTI stores x fastest, so z >= 20 is past 128 KB
    volume[10:30, 10:30, 20:35] = 300.0
    _nii(path, volume)
    before = BiobankFlair(fixture_root).fingerprint()
    assert BiobankFlair(fixture_root).fingerprint() == before
    volume[10:30, 10:30, 20:35] = 310.0  # another subject of the same size: only the brain differs
    _nii(path, volume)
    assert BiobankFlair(fixture_root).fingerprint() != before


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "volumes").glob("*")) if (cache / "volumes").exists() else []


def test_volume_cache_serves_the_same_volume_without_decoding(
    fixture_root: Path, private_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uncached = BiobankFlair(fixture_root, cache=False).split("train")
    assert _entries(private_cache_dir) == []  # cache: false writes nothing
    cached = BiobankFlair(fixture_root).split("train")
    first = [cached[i]["image"] for i in range(len(cached))]
    entries = _entries(private_cache_dir)
    assert len(entries) == len(cached) and all(p.suffix == ".npy" for p in entries)  # no temporary files left
    for i, image in enumerate(first):
        assert torch.equal(image, uncached[i]["image"])

    def no_decoding(path: Path, resolution: int) -> torch.Tensor:
        raise AssertionError(f"decoded {path} although it is cached")

    decode = flair.load_volume
    monkeypatch.setattr(flair, "load_volume", no_decoding)
    again = pickle.loads(pickle.dumps(cached))  # as a DataLoader worker gets it
    for i, image in enumerate(first):
        assert torch.equal(again[i]["image"], image)
    # Another resolution is another entry.
    monkeypatch.setattr(flair, "load_volume", decode)
    BiobankFlair(fixture_root, resolution=64).split("train")[0]
    assert len(_entries(private_cache_dir)) == len(cached) + 1


def test_volume_cache_key_follows_content_not_size_or_mtime(fixture_root: Path, private_cache_dir: Path) -> None:
    data = BiobankFlair(fixture_root).split("train")
    path = data.files[0]
    before = data[0]["image"]
    stat = path.stat()
    volume = np.asarray(nib.load(path).dataobj).copy()
    volume[volume > 0] *= np.linspace(0.5, 1.5, int((volume > 0).sum()), dtype=np.float32)  # same size, new content
    _nii(path, volume)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = data[0]["image"]
    assert not torch.equal(after, before)
    assert torch.equal(after, flair.load_volume(path, 32))


def test_volume_cache_recovers_from_bad_entries_and_unwritable_folders(
    fixture_root: Path, private_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = BiobankFlair(fixture_root).split("train")
    expected = data[0]["image"]
    (entry,) = _entries(private_cache_dir)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated by a crash of some other writer
    assert torch.equal(data[0]["image"], expected)
    assert entry.stat().st_size > 100  # rewritten
    blocker = private_cache_dir / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(blocker))
    data = BiobankFlair(fixture_root).split("train")
    with pytest.warns(UserWarning, match=re.escape(f"biobank-flair: cannot write the volume cache in {blocker}")):
        assert torch.equal(data[0]["image"], expected)
    assert torch.equal(data[0]["image"], expected)  # warned once, then uncached


def test_volume_cache_writes_are_atomic_under_concurrency(tmp_path: Path) -> None:
    cache = flair.VolumeCache(tmp_path / "volumes")
    volume = torch.rand(1, 32, 32, 32)
    seen: list[torch.Tensor | None] = []

    def hammer() -> None:
        for _ in range(20):
            cache.store("k", volume)
            seen.append(cache.load("k", 32))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 80 and all(s is not None and torch.equal(s, volume) for s in seen)
    assert [p.name for p in (tmp_path / "volumes").iterdir()] == ["k.npy"]


def test_cache_option_must_be_boolean(fixture_root: Path) -> None:
    with pytest.raises(DataError, match=re.escape("biobank-flair: option cache must be true or false, got 'yes'")):
        BiobankFlair(fixture_root, cache="yes")
