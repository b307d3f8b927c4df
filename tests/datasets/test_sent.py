"""The ``sent`` dataset plugin: embedded data round trip, loose and zipped real-format fixtures, bad inputs."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench_core.api import SPLITS, DataError, DatasetPlugin
from bench_plugins.datasets import landcover, sent
from bench_plugins.datasets.sent import Sent

N = 6


def _pair(height: int = 256, rgb: tuple[int, int, int] = (200, 100, 50), ndvi: int = 180) -> np.ndarray:
    array = np.zeros((height, 2 * height, 3), np.uint8)
    array[:, :height] = rgb
    array[:, height:] = ndvi
    return array


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(array, mode))
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sent") / "SENT"
    Sent.make_embedded(root, n=N, seed=0)
    return root


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "SENT"
    _png(root / "train" / "10000.png", _pair())
    rgba = np.concatenate([_pair(), np.full((256, 512, 1), 7, np.uint8)], axis=2)
    _png(root / "train" / "1020.png", rgba)  # alpha must be dropped
    _png(root / "val" / "00.png", _pair(rgb=(0, 0, 0), ndvi=0))
    _png(root / "test" / "5.png", _pair())
    return root


def test_embedded_round_trip(embedded: Path) -> None:
    plugin = Sent(embedded)
    spec = plugin.spec()
    assert spec.split_sizes == {"train": 4, "val": 1, "test": 1}
    assert spec.modalities == ("A", "B") and spec.channels == (3, 1) and spec.paired
    assert spec.shape == (256, 256) and spec.value_range == (-1.0, 1.0) and spec.dims == 2
    assert sorted(p.name for p in (embedded / "train").iterdir()) == ["100.png", "101.png", "102.png", "103.png"]
    for split in SPLITS:
        data = plugin.split(split)
        ids = [data[i]["id"] for i in range(len(data))]
        assert ids == sorted(ids) == sorted(p.stem for p in (embedded / split).iterdir())
        item = data[0]
        assert item["A"].shape == (3, 256, 256) and item["B"].shape == (1, 256, 256)
        assert item["A"].dtype == item["B"].dtype == torch.float32
        for key in ("A", "B"):
            assert -1.0 <= item[key].min() < item[key].max() <= 1.0


def test_embedded_files_match_real_format_and_physics(embedded: Path) -> None:
    for path in embedded.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (512, 256)
            array = np.asarray(image)
        right = array[:, 256:]
        assert np.array_equal(right[..., 0], right[..., 1]) and np.array_equal(right[..., 0], right[..., 2])
        # NDVI decoded from the right half agrees with the red/NIR-free proxy of the left half:
        # greener pixels (green above red) have higher NDVI than the rest.
        ndvi = landcover.decode_ndvi(right[..., 0])
        rgb = array[:, :256].astype(int)
        green = rgb[..., 1] > rgb[..., 0] + 10
        if green.any() and (~green).any():
            assert ndvi[green].mean() > ndvi[~green].mean()


def test_embedded_is_deterministic_per_tile(embedded: Path, tmp_path: Path) -> None:
    Sent.make_embedded(tmp_path / "same", n=3, seed=0)
    for rel in ("train/100.png", "val/110.png", "test/120.png"):
        assert (tmp_path / "same" / rel).read_bytes() == (embedded / rel).read_bytes()
    shutil.copytree(embedded, tmp_path / "copy")
    assert Sent(tmp_path / "copy").fingerprint() == Sent(embedded).fingerprint()
    assert Sent(tmp_path / "same").fingerprint() != Sent(embedded).fingerprint()


def test_real_format_fixtures(fixture_root: Path) -> None:
    plugin = Sent(fixture_root)
    train = plugin.split("train")
    assert [train[i]["id"] for i in range(2)] == ["10000", "1020"]  # sorted by file name
    first, rgba = train[0], train[1]
    assert torch.equal(first["A"], rgba["A"]) and torch.equal(first["B"], rgba["B"])
    expected = torch.tensor([200, 100, 50]) / 255 * 2 - 1
    assert torch.allclose(first["A"][:, 0, 0], expected) and first["B"].max() == pytest.approx(180 / 255 * 2 - 1)
    val = plugin.split("val")[0]
    assert (val["A"] == -1.0).all() and (val["B"] == -1.0).all()


def test_grey_png_is_read_as_three_equal_channels(fixture_root: Path) -> None:
    grey = np.zeros((256, 512), np.uint8)
    grey[:, :256], grey[:, 256:] = 120, 30
    _png(fixture_root / "test" / "5.png", grey)
    item = Sent(fixture_root).split("test")[0]
    assert torch.allclose(item["A"], torch.full((3, 256, 256), 120 / 255 * 2 - 1))


def test_zipped_split_is_read_lazily_in_member_order(fixture_root: Path) -> None:
    folder = fixture_root / "val"
    shutil.rmtree(folder)
    folder.mkdir()
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        archive.writestr("val/21.png", _png_bytes(_pair(ndvi=255)))
        archive.writestr("val/103.png", _png_bytes(_pair(ndvi=0)))
        archive.writestr("val/notes.txt", "not an image")
        archive.writestr("__MACOSX/val/._21.png", b"resource fork")
    plugin = Sent(fixture_root)
    assert plugin.spec().split_sizes["val"] == 2
    data = pickle.loads(pickle.dumps(plugin.split("val")))
    items = [data[0], data[1]]
    assert [i["id"] for i in items] == ["103", "21"]
    assert (items[0]["B"] == -1.0).all() and (items[1]["B"] == 1.0).all()
    # Pickling after reading drops the cached zip handle (DataLoader workers open their own).
    assert len(pickle.loads(pickle.dumps(data))) == 2
    before = plugin.fingerprint()
    with zipfile.ZipFile(folder / "data.zip", "a") as archive:
        archive.writestr("val/99.png", _png_bytes(_pair()))
    assert Sent(fixture_root).fingerprint() != before


def test_loose_pngs_take_precedence_over_zip(fixture_root: Path) -> None:
    with zipfile.ZipFile(fixture_root / "train" / "data.zip", "w") as archive:
        archive.writestr("1.png", _png_bytes(_pair()))
    assert Sent(fixture_root).spec().split_sizes["train"] == 2


def test_corrupt_zip_member_and_archive_name_the_file(fixture_root: Path) -> None:
    folder = fixture_root / "test"
    shutil.rmtree(folder)
    folder.mkdir()
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        archive.writestr("7.png", b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"data\.zip:7\.png: cannot read PNG file"):
        Sent(fixture_root).split("test")[0]
    (folder / "data.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"data\.zip: cannot read zip archive"):
        Sent(fixture_root)
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        archive.writestr("readme.txt", "no images")
    with pytest.raises(DataError, match=r"data\.zip: zip archive holds no \.png files"):
        Sent(fixture_root)


def test_size_option_resizes(fixture_root: Path) -> None:
    plugin = Sent(fixture_root, size=[64, 32])
    item = plugin.split("train")[0]
    assert plugin.spec().shape == (64, 32)
    assert item["A"].shape == (3, 64, 32) and item["B"].shape == (1, 64, 32)


def test_split_loads_in_batches_and_registers(fixture_root: Path) -> None:
    batch = next(iter(DataLoader(Sent(fixture_root, size=(32, 32)).split("train"), batch_size=2)))
    assert batch["A"].shape == (2, 3, 32, 32) and batch["B"].shape == (2, 1, 32, 32)
    assert sent.bench_datasets() == [Sent]
    assert isinstance(Sent(fixture_root), DatasetPlugin)
    assert "SigmaRichards/ndvi-rgb-i2i-data" in Sent.obtain


def test_unpaired_width_names_file_and_shape(fixture_root: Path) -> None:
    path = _png(fixture_root / "train" / "10000.png", np.zeros((256, 300, 3), np.uint8))
    with pytest.raises(DataError, match=r"width 2 x height, got 256x300") as info:
        Sent(fixture_root).split("train")[0]
    assert str(path) in str(info.value)


def test_corrupt_and_16_bit_pngs_name_the_file(fixture_root: Path) -> None:
    path = fixture_root / "train" / "10000.png"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DataError, match="cannot read PNG file") as info:
        Sent(fixture_root).split("train")[0]
    assert str(path) in str(info.value)
    _png(path, np.zeros((256, 512), np.uint16))
    with pytest.raises(DataError, match="expected an 8-bit RGB PNG, got mode I;16"):
        Sent(fixture_root).split("train")[0]


def test_missing_root_split_and_unknown_option(fixture_root: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'validate'"):
        Sent(fixture_root).split("validate")
    with pytest.raises(DataError, match=r"nowhere does not exist.*data\.zip"):
        Sent(fixture_root / "nowhere")
    with pytest.raises(DataError, match=r"unknown option 'layout'; valid options: size"):
        Sent(fixture_root, layout="zip")
    shutil.rmtree(fixture_root / "test")
    with pytest.raises(DataError, match=r"test does not exist"):
        Sent(fixture_root)
    (fixture_root / "val" / "00.png").unlink()
    with pytest.raises(DataError, match=r"val holds no \*\.png files and no data\.zip"):
        Sent(fixture_root)
