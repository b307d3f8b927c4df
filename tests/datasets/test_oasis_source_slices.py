"""``oasis`` with ``layout: slices``: seed 002's folder of 2D NIfTI centre slices, read and split as the source does."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import random_split

from bench_core.api import DataError
from bench_plugins.datasets.oasis import Oasis


def _write_slices(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = root / f"OAS1_{i:04d}_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz"
        # As extract_slices.py writes them: the volume's centre slice, float64, identity affine.
        nib.Nifti1Image(rng.normal(100.0, 30.0, (176, 208)), np.eye(4)).to_filename(path)
        files.append(path)
    return files


def test_slices_layout_splits_and_reads_like_the_source(tmp_path: Path) -> None:
    files = _write_slices(tmp_path, 30)
    data = Oasis(tmp_path, layout="slices")
    spec = data.spec()
    assert spec.shape == (64, 64) and spec.split_sizes == {"train": 28, "val": 1, "test": 1}
    # The source's own calls on the (sorted) file list give the same membership.
    main, test = random_split(files, [29, 1], generator=torch.Generator().manual_seed(42))
    train, val = random_split(list(main), [28, 1], generator=torch.Generator().manual_seed(42))
    for name, part in (("train", train), ("val", val), ("test", test)):
        assert [f for f in data.split(name).files] == sorted(part), name
    item = data.split("train")[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0  # min-max to [-1, 1], then resized
    assert item["id"] == data.split("train").files[0].name[: -len(".nii.gz")]


def test_slices_layout_refuses_3d_volumes(tmp_path: Path) -> None:
    _write_slices(tmp_path, 3)
    nib.Nifti1Image(np.zeros((8, 8, 8)), np.eye(4)).to_filename(tmp_path / "volume.nii.gz")
    data = Oasis(tmp_path, layout="slices")
    path = next(p for split in ("train", "val", "test") for p in data.split(split).files if p.name == "volume.nii.gz")
    split = next(s for s in ("train", "val", "test") if path in data.split(s).files)
    with pytest.raises(DataError, match="expected a 2D slice"):
        data.split(split)[list(data.split(split).files).index(path)]
