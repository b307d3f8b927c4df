"""The ``hipmri`` dataset plugin: embedded data round trip, real-format fixtures and bad inputs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bench_core.api import DataError, DatasetPlugin
from bench_plugins.datasets import hipmri
from bench_plugins.datasets.hipmri import SPLIT_FOLDERS, HipMRI

N = 12


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _ramp(shape: tuple[int, ...], dtype: type = np.float32, scale: float = 1000.0) -> np.ndarray:
    return (np.linspace(0.0, scale, int(np.prod(shape))).reshape(shape)).astype(dtype)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hipmri") / "data"
    HipMRI.make_embedded(root, n=N, seed=0)
    return root


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    """Hand-written files in the real layout: odd shapes and dtypes as found in the real data."""
    root = tmp_path / "keras_slices_data"
    _write(root / "keras_slices_train" / "case_004_week_0_slice_0.nii.gz", _ramp((256, 128)))
    _write(root / "keras_slices_train" / "case_004_week_0_slice_1.nii.gz", _ramp((256, 128, 1)))
    _write(root / "keras_slices_train" / "case_004_week_0_slice_2.nii.gz", _ramp((256, 144)))
    _write(root / "keras_slices_train" / "case_004_week_0_slice_3.nii.gz", _ramp((256, 128), np.int16))
    _write(root / "keras_slices_validate" / "case_005_week_0_slice_0.nii.gz", _ramp((256, 128), np.uint8, 255))
    _write(root / "keras_slices_test" / "case_006_week_0_slice_0.nii.gz", np.full((256, 128), 7.0, np.float32))
    _write(root / "keras_slices_seg_test" / "seg_006_week_0_slice_0.nii.gz", np.zeros((256, 128), np.uint8))
    return root


def _case(item_id: str) -> str:
    return item_id.split("_week_")[0]


def test_embedded_round_trip(embedded: Path) -> None:
    plugin = HipMRI(embedded)
    spec = plugin.spec()
    assert spec.split_sizes == {"train": 10, "val": 1, "test": 1}
    assert spec.modalities == ("image",) and spec.channels == (1,) and spec.dims == 2
    assert spec.shape == (256, 128) and spec.value_range == (-1.0, 1.0)
    cases = {}
    for split, folder in SPLIT_FOLDERS.items():
        data = plugin.split(split)
        ids = [data[i]["id"] for i in range(len(data))]
        assert ids == sorted(ids)
        assert ids == sorted(p.name[: -len(".nii.gz")] for p in (embedded / folder).iterdir())
        for i in range(len(data)):
            image = data[i]["image"]
            assert image.shape == (1, 256, 128) and image.dtype == torch.float32
            assert image.min() == -1.0 and image.max() == 1.0
        cases[split] = {_case(i) for i in ids}
    assert not (cases["train"] & cases["val"] or cases["train"] & cases["test"] or cases["val"] & cases["test"])


def test_embedded_files_match_real_format(embedded: Path) -> None:
    for folder in SPLIT_FOLDERS.values():
        for image_path in (embedded / folder).iterdir():
            assert image_path.name.startswith("case_") and image_path.name.endswith(".nii.gz")
            image = nib.load(image_path)
            assert image.shape == (256, 128) and image.get_data_dtype() == np.float32
            assert image.get_fdata().min() >= 0.0 and 300.0 < image.get_fdata().max() < 2000.0
            seg_path = embedded / folder.replace("slices_", "slices_seg_") / image_path.name.replace("case_", "seg_")
            seg = nib.load(seg_path)
            assert seg.shape == (256, 128) and seg.get_data_dtype() == np.uint8
            assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))


def test_embedded_is_deterministic(embedded: Path, tmp_path: Path) -> None:
    HipMRI.make_embedded(tmp_path / "same", n=N, seed=0)
    HipMRI.make_embedded(tmp_path / "other", n=3, seed=1)
    assert HipMRI(tmp_path / "same").fingerprint() == HipMRI(embedded).fingerprint()
    assert HipMRI(tmp_path / "other").fingerprint() != HipMRI(embedded).fingerprint()
    for path in embedded.rglob("*.nii.gz"):
        assert path.read_bytes() == (tmp_path / "same" / path.relative_to(embedded)).read_bytes()


def test_size_option_resizes(embedded: Path) -> None:
    plugin = HipMRI(embedded, size=[64, 32])
    assert plugin.spec().shape == (64, 32)
    image = plugin.split("train")[0]["image"]
    assert image.shape == (1, 64, 32) and image.min() >= -1.0 and image.max() <= 1.0


def test_real_format_fixtures(fixture_root: Path) -> None:
    plugin = HipMRI(fixture_root)
    assert plugin.spec().split_sizes == {"train": 4, "val": 1, "test": 1}
    train = plugin.split("train")
    assert [train[i]["id"] for i in range(4)] == [f"case_004_week_0_slice_{i}" for i in range(4)]
    plain = train[0]["image"]
    for i in range(4):  # trailing singleton squeezed, 256x144 resized, int16 read as float
        image = train[i]["image"]
        assert image.shape == (1, 256, 128) and image.dtype == torch.float32
        assert image.min() == -1.0 and image.max() == 1.0
    assert torch.equal(train[1]["image"], plain)
    # int16 storage truncates the ramp to integers: one level of 0..1000 is 0.002 in [-1, 1].
    assert (train[3]["image"] - plain).abs().max() < 2.5e-3
    # A ramp stays a ramp through the bilinear resize.
    assert (train[2]["image"].flatten().diff() >= -1e-6).all()
    assert plugin.split("val")[0]["image"].max() == 1.0
    # A constant (empty) slice is legal and maps to -1 without dividing by zero.
    assert (plugin.split("test")[0]["image"] == -1.0).all()


def test_fingerprint_is_stable_and_tracks_changes(fixture_root: Path) -> None:
    before = HipMRI(fixture_root).fingerprint()
    assert HipMRI(fixture_root).fingerprint() == before
    _write(fixture_root / "keras_slices_train" / "case_004_week_0_slice_0.nii.gz", _ramp((256, 128), scale=999.0))
    changed = HipMRI(fixture_root).fingerprint()
    assert changed != before
    (fixture_root / "keras_slices_validate" / "case_005_week_0_slice_0.nii.gz").rename(
        fixture_root / "keras_slices_validate" / "case_007_week_0_slice_0.nii.gz"
    )
    assert HipMRI(fixture_root).fingerprint() != changed


def test_split_pickles_and_loads_in_batches(fixture_root: Path) -> None:
    data = pickle.loads(pickle.dumps(HipMRI(fixture_root, size=(32, 16)).split("train")))
    batches = list(DataLoader(data, batch_size=3, num_workers=0))
    assert [b["image"].shape for b in batches] == [(3, 1, 32, 16), (1, 1, 32, 16)]
    assert batches[0]["id"] == ["case_004_week_0_slice_0", "case_004_week_0_slice_1", "case_004_week_0_slice_2"]


def test_registered_through_hook(fixture_root: Path) -> None:
    assert hipmri.bench_datasets() == [HipMRI]
    assert isinstance(HipMRI(fixture_root), DatasetPlugin)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.*keras_slices_\{train,validate,test\}"):
        HipMRI(tmp_path / "nowhere")


def test_missing_split_folder(fixture_root: Path) -> None:
    shutil.rmtree(fixture_root / "keras_slices_test")
    with pytest.raises(DataError, match=r"keras_slices_test does not exist"):
        HipMRI(fixture_root)


def test_empty_split_folder(fixture_root: Path) -> None:
    for path in (fixture_root / "keras_slices_validate").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"keras_slices_validate holds no"):
        HipMRI(fixture_root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.random.default_rng(0).bytes(4096), "cannot read NIfTI file"),
        (None, "NaN or Inf"),
        (np.zeros((256, 128, 3), np.float32), r"expected a 2D slice.*\(256, 128, 3\)"),
    ],
)
def test_bad_file_names_the_file(fixture_root: Path, content: bytes | np.ndarray | None, message: str) -> None:
    path = fixture_root / "keras_slices_train" / "case_004_week_0_slice_0.nii.gz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        array = _ramp((256, 128)) if content is None else content
        if content is None:
            array[10, 10] = np.nan
        _write(path, array)
    data = HipMRI(fixture_root).split("train")
    with pytest.raises(DataError, match=message) as info:
        data[0]
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sise": [64, 32]}, r"unknown option 'sise'; valid options: normalize, size"),
        ({"size": [64]}, r"size must be two positive integers"),
        ({"size": [64, 0]}, r"size must be two positive integers"),
        ({"normalize": "zscore"}, r"unknown normalize 'zscore'; valid values: minmax"),
    ],
)
def test_bad_options(fixture_root: Path, options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        HipMRI(fixture_root, **options)


def test_unknown_split(fixture_root: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'validate'"):
        HipMRI(fixture_root).split("validate")


def test_make_embedded_needs_one_item_per_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 3"):
        HipMRI.make_embedded(tmp_path, n=2)
