"""``bench data check``'s engine side: good folders pass, every bad file is named with its reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bench_core.api import API_VERSION, BenchError, DataError, DataSpec
from bench_core.datacheck import check_dataset, parse_options
from bench_plugins.datasets.gold import Gold
from bench_plugins.datasets.hipmri import HipMRI


@pytest.fixture(scope="module")
def gold_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check") / "GOLD"
    Gold.make_embedded(root, n=3, seed=0)
    return root


@pytest.fixture(scope="module")
def hipmri_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check") / "hipmri"
    HipMRI.make_embedded(root, n=3, seed=0)
    return root


def test_good_embedded_folders_pass(gold_root: Path, hipmri_root: Path) -> None:
    calls: list[tuple[str, int, int]] = []

    def record(split: str, done: int, total: int) -> None:
        calls.append((split, done, total))

    for cls, root in ((Gold, gold_root), (HipMRI, hipmri_root)):
        report = check_dataset(cls, root, {"size": [64, 32]}, progress=record)
        assert report.ok and report.error is None and report.bad_items == []
        assert [(s, r.count) for s, r in report.splits.items()] == [("train", 1), ("val", 1), ("test", 1)]
        assert calls[-1] == ("test", 1, 1)
        train = report.splits["train"]
        assert train.dtypes == {"float32"} and train.nan == train.inf == 0
        assert -1.0 <= train.minimum < train.maximum <= 1.0
        text = report.format()
        assert text.splitlines()[-1] == "OK" and "size=[64, 32]" in text
    gold = check_dataset(Gold, gold_root, {})
    assert gold.splits["val"].shapes == {"A": {(1, 256, 256)}, "B": {(1, 256, 256)}}
    assert gold.splits["val"].pairing == "ok" and "pairs" in gold.format()


def test_bad_gold_files_are_each_named_with_the_reason(gold_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "GOLD"
    shutil.copytree(gold_root, root)
    corrupt = sorted((root / "train").glob("*.png"))[0]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    wrong = sorted((root / "test").glob("*.png"))[0]
    Image.fromarray(np.zeros((256, 300), np.uint8)).save(wrong)
    report = check_dataset(Gold, root, {})
    assert not report.ok
    bad = {item.item: item.reason for item in report.bad_items}
    assert set(bad) == {str(corrupt), str(wrong)}
    assert "cannot read PNG file" in bad[str(corrupt)] and "got 256x300" in bad[str(wrong)]
    assert report.splits["val"].ok and not report.splits["train"].ok
    text = report.format()
    assert str(corrupt) in text and str(wrong) in text and "FAILED: 2 bad item(s)" in text


def test_nan_nifti_is_named(hipmri_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "hipmri"
    shutil.copytree(hipmri_root, root)
    path = sorted((root / "keras_slices_validate").glob("*.nii.gz"))[0]
    image = np.ones((256, 128), np.float32)
    image[10, 10] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), path)
    report = check_dataset(HipMRI, root, {})
    assert not report.ok and len(report.bad_items) == 1
    item = report.bad_items[0]
    assert (item.split, item.index, item.item) == ("val", 0, str(path)) and "NaN" in item.reason


def test_missing_split_and_bad_options_are_reported(gold_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "GOLD"
    shutil.copytree(gold_root, root)
    shutil.rmtree(root / "val")
    report = check_dataset(Gold, root, {})
    assert not report.ok and report.splits == {} and "val does not exist" in report.error
    assert "cannot load" in report.format() and report.format().endswith("FAILED")
    report = check_dataset(Gold, gold_root, {"normalize": "minmax"})
    assert not report.ok and "unknown option 'normalize'" in report.error


class _Loose:
    """A dataset that trusts its files: the checker must catch what the loader lets through."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = self.items[index]
        if isinstance(item, Exception):
            raise item
        return item


class _Paired:
    name: ClassVar[str] = "loose-pairs"
    version: ClassVar[str] = "1.0"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path) -> None:
        self.root = root

    def spec(self) -> DataSpec:
        sizes = {"train": 5, "val": 1, "test": 0}
        return DataSpec(("A", "B"), (3, 1), 2, (4, 4), (-1.0, 1.0), split_sizes=sizes)

    def split(self, name: str) -> _Loose:
        def pair(a: torch.Tensor | None = None, b: torch.Tensor | None = None, **extra: Any) -> dict[str, Any]:
            item = {"A": torch.zeros(3, 4, 4) if a is None else a, "B": torch.zeros(1, 4, 4) if b is None else b}
            return {**item, "id": "x", **extra}

        if name == "val":
            raise DataError("val.lst: cannot list split")
        if name == "test":
            return _Loose([])
        nan = torch.zeros(1, 4, 4)
        nan[0, 0, 0] = float("nan")
        items = [
            pair(),
            pair(b=torch.zeros(1, 4, 5)),
            pair(b=nan, a=torch.full((3, 4, 4), 1.5)),
            {"A": torch.zeros(3, 4, 4), "id": "y"},
            RuntimeError("decoder exploded"),
        ]
        return _Loose(items)

    def fingerprint(self) -> str:
        return "0"


def test_checks_against_the_spec_with_a_trusting_plugin(tmp_path: Path) -> None:
    report = check_dataset(_Paired, tmp_path, {})
    assert not report.ok
    train = report.splits["train"]
    reasons = {item.index: item.reason for item in train.bad}
    assert set(reasons) == {1, 2, 3, 4}
    assert "pair mismatch: A spatial shape (4, 4) != B spatial shape (4, 5)" in reasons[1]
    assert "B has shape (1, 4, 5), the spec says (1, 4, 4)" in reasons[1]
    assert "B has 1 NaN and 0 Inf values" in reasons[2] and "A values [1.5, 1.5] leave the value range" in reasons[2]
    assert reasons[3] == "B missing" and reasons[4] == "RuntimeError: decoder exploded"
    assert train.bad[3].item == "#4" and train.bad[0].item == "x"  # no files: ids, else the index
    assert train.nan == 1 and train.pairing == "2 bad" and train.shapes["B"] == {(1, 4, 4), (1, 4, 5)}
    assert report.splits["val"].problems == ["cannot open split: val.lst: cannot list split"]
    assert report.splits["test"].problems == ["split is empty"]
    text = report.format()
    assert "val: cannot open split" in text and "test: split is empty" in text and "train[4] #4" in text


def test_parse_options() -> None:
    assert parse_options(["size=[64, 32]", "layout=nifti", "resolution=64"]) == {
        "size": [64, 32],
        "layout": "nifti",
        "resolution": 64,
    }
    with pytest.raises(BenchError, match="not KEY=VALUE"):
        parse_options(["size"])


def test_module_does_not_import_torch() -> None:
    code = "import sys, bench_core.datacheck; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_truncated_and_big_endian_niftis(hipmri_root: Path, tmp_path: Path) -> None:
    """A truncated .nii.gz is named with its exact reason; a big-endian int16 slice passes with the right values."""
    root = tmp_path / "hipmri"
    shutil.copytree(hipmri_root, root)
    truncated = sorted((root / "keras_slices_train").glob("*.nii.gz"))[0]
    noisy = np.random.default_rng(0).uniform(0, 1000, (256, 128)).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy, np.eye(4)), truncated)
    truncated.write_bytes(truncated.read_bytes()[:60_000])
    big_endian = sorted((root / "keras_slices_test").glob("*.nii.gz"))[0]
    signed = (np.arange(256 * 128) % 3001 - 1500).astype(np.int16).reshape(256, 128)
    image = nib.Nifti1Image(signed, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    image.header.set_data_dtype(">i2")
    nib.save(image, big_endian)
    report = check_dataset(HipMRI, root, {})
    assert [(item.split, item.item) for item in report.bad_items] == [("train", str(truncated))]
    assert report.bad_items[0].reason == (
        f"{truncated}: truncated NIfTI file: the header declares a 256x128 float32 array (131072 bytes) "
        "but the data ends early; copy or export the file again"
    )
    assert report.splits["test"].ok and report.splits["test"].minimum == -1.0 and report.splits["test"].maximum == 1.0
    values = HipMRI(root).split("test")[0]["image"][0].numpy()
    np.testing.assert_allclose(values, 2 * (signed + 1500) / 3000 - 1, atol=1e-6)
