"""The ``gold`` dataset plugin: embedded data round trip, real-format fixtures and bad inputs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench_core.api import SPLITS, DataError, DatasetPlugin
from bench_plugins.datasets import gold
from bench_plugins.datasets.gold import Gold

N = 12


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def _pair(height: int = 256, ct: int = 200, mr: int = 100) -> np.ndarray:
    array = np.zeros((height, 2 * height), np.uint8)
    array[height // 4 : -height // 4, height // 8 : height - height // 8] = ct
    array[height // 4 : -height // 4, height + height // 8 : -height // 8] = mr
    return array


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gold") / "GOLD"
    Gold.make_embedded(root, n=N, seed=0)
    return root


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "GOLD"
    _png(root / "train" / "1_01_P_37.png", _pair())
    _png(root / "train" / "1_01_P_38.png", _pair(), mode="RGB")  # as cv2 would write it
    _png(root / "val" / "1_06_P_10.png", _pair(ct=255, mr=0))
    _png(root / "test" / "1_07_P_5.png", _pair())
    return root


def test_embedded_round_trip(embedded: Path) -> None:
    plugin = Gold(embedded)
    spec = plugin.spec()
    assert spec.split_sizes == {"train": 10, "val": 1, "test": 1}
    assert spec.modalities == ("A", "B") and spec.channels == (1, 1) and spec.paired
    assert spec.shape == (256, 256) and spec.value_range == (-1.0, 1.0)
    patients = {}
    for split in SPLITS:
        data = plugin.split(split)
        ids = [data[i]["id"] for i in range(len(data))]
        assert ids == sorted(ids) == sorted(p.stem for p in (embedded / split).iterdir())
        for i in range(len(data)):
            item = data[i]
            for key in ("A", "B"):
                assert item[key].shape == (1, 256, 256) and item[key].dtype == torch.float32
                assert item[key].min() == -1.0 and item[key].max() <= 1.0
            # Both halves are masked with the body mask: CT background is background in MR too.
            assert (item["B"][item["A"] == -1.0] == -1.0).all()
        patients[split] = {i.rsplit("_", 1)[0] for i in ids}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    assert not patients["val"] & patients["test"]


def test_embedded_files_match_real_format(embedded: Path) -> None:
    for path in embedded.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (512, 256)
            array = np.asarray(image)
        assert array[0, 0] == 0 and array[0, 256] == 0  # masked background in both halves
        assert array[:, :256].max() > 200  # bone near the top of the CT window


def test_embedded_is_deterministic(embedded: Path, tmp_path: Path) -> None:
    Gold.make_embedded(tmp_path / "same", n=N, seed=0)
    Gold.make_embedded(tmp_path / "other", n=3, seed=1)
    assert Gold(tmp_path / "same").fingerprint() == Gold(embedded).fingerprint()
    assert Gold(tmp_path / "other").fingerprint() != Gold(embedded).fingerprint()


def test_real_format_fixtures(fixture_root: Path) -> None:
    plugin = Gold(fixture_root)
    train = plugin.split("train")
    first, second = train[0], train[1]
    assert first["id"] == "1_01_P_37"
    assert torch.equal(first["A"], second["A"]) and torch.equal(first["B"], second["B"])
    assert first["A"].max() == pytest.approx(200 / 255 * 2 - 1) and first["B"].max() == pytest.approx(100 / 255 * 2 - 1)
    val = plugin.split("val")[0]
    assert val["A"].max() == 1.0 and (val["B"] == -1.0).all()


def test_size_option_resizes(fixture_root: Path) -> None:
    plugin = Gold(fixture_root, size=[64, 64])
    item = plugin.split("train")[0]
    assert plugin.spec().shape == (64, 64)
    assert item["A"].shape == item["B"].shape == (1, 64, 64)
    assert item["A"].min() >= -1.0 and item["A"].max() <= 1.0


def test_fingerprint_is_stable_and_tracks_changes(fixture_root: Path) -> None:
    before = Gold(fixture_root).fingerprint()
    assert Gold(fixture_root).fingerprint() == before
    _png(fixture_root / "test" / "1_07_P_5.png", _pair(mr=101))
    assert Gold(fixture_root).fingerprint() != before


def test_split_pickles_and_loads_in_batches(fixture_root: Path) -> None:
    data = pickle.loads(pickle.dumps(Gold(fixture_root, size=(32, 32)).split("train")))
    batch = next(iter(DataLoader(data, batch_size=2, num_workers=0)))
    assert batch["A"].shape == batch["B"].shape == (2, 1, 32, 32)
    assert batch["id"] == ["1_01_P_37", "1_01_P_38"]


def test_registered_through_hook(fixture_root: Path) -> None:
    assert gold.bench_datasets() == [Gold]
    assert isinstance(Gold(fixture_root), DatasetPlugin)


def test_unpaired_width_names_file_and_shape(fixture_root: Path) -> None:
    path = _png(fixture_root / "train" / "1_01_P_37.png", np.zeros((256, 256), np.uint8))
    with pytest.raises(DataError, match=r"width 2 x height, got 256x256") as info:
        Gold(fixture_root).split("train")[0]
    assert str(path) in str(info.value)


def test_corrupt_png_names_file(fixture_root: Path) -> None:
    path = fixture_root / "train" / "1_01_P_37.png"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DataError, match="cannot read PNG file") as info:
        Gold(fixture_root).split("train")[0]
    assert str(path) in str(info.value)


def test_16_bit_png_is_rejected(fixture_root: Path) -> None:
    path = _png(fixture_root / "train" / "1_01_P_37.png", np.zeros((256, 512), np.uint16))
    with pytest.raises(DataError, match="expected an 8-bit grayscale PNG") as info:
        Gold(fixture_root).split("train")[0]
    assert str(path) in str(info.value)


def test_missing_root_and_split_folders(fixture_root: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere does not exist.*\{train,val,test\}"):
        Gold(fixture_root / "nowhere")
    shutil.rmtree(fixture_root / "test")
    with pytest.raises(DataError, match=r"test does not exist"):
        Gold(fixture_root)
    for path in (fixture_root / "val").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"val holds no \*\.png files"):
        Gold(fixture_root)


def test_unknown_option(fixture_root: Path) -> None:
    with pytest.raises(DataError, match=r"unknown option 'normalize'; valid options: size"):
        Gold(fixture_root, normalize="minmax")
