"""The ``oasis`` dataset plugin: PNG and NIfTI layouts, embedded data round trip, bad inputs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench_core.api import SPLITS, DataError, DatasetPlugin
from bench_plugins.datasets import oasis
from bench_plugins.datasets.oasis import SPLIT_FOLDERS, Oasis, split_volumes

N = 6


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def _nii(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _ramp(shape: tuple[int, ...], scale: float = 255.0) -> np.ndarray:
    return np.linspace(0.0, scale, int(np.prod(shape))).reshape(shape).astype(np.float32)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oasis") / "keras_png_slices_data"
    Oasis.make_embedded(root, n=N, seed=0)
    return root


@pytest.fixture
def png_root(tmp_path: Path) -> Path:
    root = tmp_path / "keras_png_slices_data"
    _png(root / SPLIT_FOLDERS["train"] / "case_001_slice_0.nii.png", _ramp((256, 256)).astype(np.uint8))
    _png(root / SPLIT_FOLDERS["train"] / "case_001_slice_1.nii.png", _ramp((256, 256)).astype(np.uint8), "RGB")
    _png(root / SPLIT_FOLDERS["val"] / "case_402_slice_0.nii.png", np.full((256, 256), 9, np.uint8))
    _png(root / SPLIT_FOLDERS["test"] / "case_441_slice_0.nii.png", _ramp((256, 256), 100).astype(np.uint8))
    _png(root / "keras_png_slices_seg_test" / "seg_441_slice_0.nii.png", np.zeros((256, 256), np.uint8))
    return root


@pytest.fixture
def nifti_root(tmp_path: Path) -> Path:
    root = tmp_path / "OASIS"
    for index in range(21):
        _nii(root / f"OAS1_{index:04d}_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz", _ramp((5, 8, 6), 10.0 + index))
    (root / "notes.txt").write_text("not a volume")
    return root


def test_embedded_round_trip(embedded: Path) -> None:
    plugin = Oasis(embedded)
    spec = plugin.spec()
    assert spec.split_sizes == {"train": 4, "val": 1, "test": 1}
    assert spec.modalities == ("image",) and spec.channels == (1,) and spec.shape == (256, 256)
    cases = {}
    for split in SPLITS:
        data = plugin.split(split)
        ids = [data[i]["id"] for i in range(len(data))]
        assert ids == sorted(ids)
        item = data[0]
        assert item["image"].shape == (1, 256, 256) and item["image"].dtype == torch.float32
        assert item["image"].min() == -1.0 and item["image"].max() == 1.0
        cases[split] = {i.rsplit("_slice_", 1)[0] for i in ids}
    assert cases == {"train": {"case_001"}, "val": {"case_002"}, "test": {"case_003"}}


def test_embedded_files_match_real_format_and_anatomy(embedded: Path) -> None:
    images = sorted((embedded / SPLIT_FOLDERS["train"]).iterdir())
    assert [p.name for p in images] == [f"case_001_slice_{s}.nii.png" for s in (0, 12, 4, 8)]
    for path in images:
        seg = embedded / "keras_png_slices_seg_train" / path.name.replace("case_", "seg_")
        with Image.open(path) as image, Image.open(seg) as mask:
            assert image.mode == mask.mode == "L" and image.size == mask.size == (256, 256)
            pixels, levels = np.asarray(image).astype(float), np.asarray(mask)
        assert set(np.unique(levels)) <= {0, 85, 170, 255}
        assert (pixels[levels == 0] == 0).all()  # skull-stripped background
        # T1 contrast: CSF < GM < WM.
        csf, gm, wm = (pixels[levels == level].mean() for level in (85, 170, 255))
        assert csf < gm < wm


def test_embedded_is_deterministic_per_case(embedded: Path, tmp_path: Path) -> None:
    Oasis.make_embedded(tmp_path / "same", n=3, seed=0)
    for split, name in (("train", "case_001_slice_0"), ("val", "case_002_slice_0"), ("test", "case_003_slice_0")):
        rel = Path(SPLIT_FOLDERS[split]) / f"{name}.nii.png"
        assert (tmp_path / "same" / rel).read_bytes() == (embedded / rel).read_bytes()
    shutil.copytree(embedded, tmp_path / "copy")
    assert Oasis(tmp_path / "copy").fingerprint() == Oasis(embedded).fingerprint()
    assert Oasis(tmp_path / "same").fingerprint() != Oasis(embedded).fingerprint()


def test_png_fixtures(png_root: Path) -> None:
    plugin = Oasis(png_root)
    train = plugin.split("train")
    first, rgb = train[0], train[1]
    assert first["id"] == "case_001_slice_0" and torch.equal(first["image"], rgb["image"])
    assert first["image"].min() == -1.0 and first["image"].max() == 1.0
    assert (plugin.split("val")[0]["image"] == -1.0).all()  # constant slice
    # Per-slice min-max: a slice spanning 0..100 is stretched to [-1, 1] too.
    assert plugin.split("test")[0]["image"].max() == 1.0


def test_png_size_option_and_batches(png_root: Path) -> None:
    plugin = Oasis(png_root, size=[64, 64])
    data = pickle.loads(pickle.dumps(plugin.split("train")))
    batch = next(iter(DataLoader(data, batch_size=2)))
    assert plugin.spec().shape == (64, 64) and batch["image"].shape == (2, 1, 64, 64)
    assert batch["id"] == ["case_001_slice_0", "case_001_slice_1"]


def test_nifti_layout_middle_slice_by_hand(nifti_root: Path) -> None:
    plugin = Oasis(nifti_root, layout="nifti", size=[6, 6])
    spec = plugin.spec()
    assert spec.shape == (6, 6) and sum(spec.split_sizes.values()) == 21
    assert spec.split_sizes == {"train": 19, "val": 1, "test": 1}
    item = plugin.split("train")[0]
    volume = nib.load(plugin.split("train").files[0]).get_fdata()
    middle = volume[volume.shape[0] // 2]  # (8, 6): shorter side already 6, so only the centre crop acts
    expected = 2 * (middle - middle.min()) / (middle.max() - middle.min()) - 1
    torch.testing.assert_close(item["image"][0], torch.from_numpy(expected[1:7]).float())
    assert item["id"] == plugin.split("train").files[0].name.removesuffix(".nii.gz")
    assert Oasis(nifti_root, layout="nifti").spec().shape == (64, 64)  # seed 002's D
    assert Oasis(nifti_root, layout="nifti").split("test")[0]["image"].shape == (1, 64, 64)


def test_nifti_split_is_seeded_disjoint_and_sorted(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:03d}.nii" for i in range(45)]
    parts = split_volumes(files)
    assert {k: len(v) for k, v in parts.items()} == {"train": 41, "val": 2, "test": 2}
    assert sorted(sum(parts.values(), [])) == files
    assert all(v == sorted(v) for v in parts.values())
    assert split_volumes(list(reversed(files))) == parts
    assert {k: len(v) for k, v in split_volumes(files[:3]).items()} == {"train": 1, "val": 1, "test": 1}


def test_nifti_bad_inputs_name_the_file(nifti_root: Path) -> None:
    plugin = Oasis(nifti_root, layout="nifti")
    path = plugin.split("train").files[0]
    volume = _ramp((5, 8, 6))
    volume[2, 3, 3] = np.nan
    _nii(path, volume)
    with pytest.raises(DataError, match="middle slice contains NaN") as info:
        plugin.split("train")[0]
    assert str(path) in str(info.value)
    _nii(path, _ramp((8, 6)))
    with pytest.raises(DataError, match=r"expected a 3D volume, got shape \(8, 6\)"):
        plugin.split("train")[0]
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read NIfTI file") as info:
        plugin.split("train")[0]
    assert str(path) in str(info.value)
    for extra in sorted(nifti_root.glob("*.nii.gz"))[2:]:
        extra.unlink()
    with pytest.raises(DataError, match="holds 2 NIfTI volumes, need at least 3"):
        Oasis(nifti_root, layout="nifti")


def test_png_bad_inputs_name_the_file(png_root: Path) -> None:
    path = png_root / SPLIT_FOLDERS["train"] / "case_001_slice_0.nii.png"
    path.write_bytes(np.random.default_rng(0).bytes(1024))
    with pytest.raises(DataError, match="cannot read PNG file") as info:
        Oasis(png_root).split("train")[0]
    assert str(path) in str(info.value)
    _png(path, np.zeros((256, 256), np.uint16))
    with pytest.raises(DataError, match="expected an 8-bit grayscale PNG"):
        Oasis(png_root).split("train")[0]
    shutil.rmtree(png_root / SPLIT_FOLDERS["val"])
    with pytest.raises(DataError, match="keras_png_slices_validate does not exist"):
        Oasis(png_root)
    with pytest.raises(DataError, match="nowhere does not exist"):
        Oasis(png_root / "nowhere")


def test_options_and_registration(png_root: Path) -> None:
    with pytest.raises(DataError, match=r"unknown layout 'dicom'; valid values: png, nifti"):
        Oasis(png_root, layout="dicom")
    with pytest.raises(DataError, match=r"unknown option 'resolution'; valid options: layout, size"):
        Oasis(png_root, resolution=64)
    with pytest.raises(DataError, match=r"unknown split 'validate'"):
        Oasis(png_root).split("validate")
    assert oasis.bench_datasets() == [Oasis] and isinstance(Oasis(png_root), DatasetPlugin)
    assert "oasis-brains.org" in Oasis.obtain
