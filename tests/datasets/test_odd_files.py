"""Hand-made odd files for every loader, each with the exact outcome: the values read, or the full error message."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bench_core.api import DataError
from bench_plugins.datasets import flair, gold, hipmri, oasis, sent
from bench_plugins.datasets.flair import BiobankFlair
from bench_plugins.datasets.gold import Gold
from bench_plugins.datasets.hipmri import HipMRI
from bench_plugins.datasets.oasis import Oasis
from bench_plugins.datasets.sent import Sent


def _nii(path: Path, array: np.ndarray, big_endian: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    image = nib.Nifti1Image(array, np.eye(4), header=header)
    image.header.set_data_dtype(array.dtype.newbyteorder(">") if big_endian else array.dtype)
    nib.save(image, path)
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _minmax(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float64)
    return 2.0 * (array - array.min()) / (array.max() - array.min()) - 1.0


def _raises_exactly(message: str) -> pytest.RaisesContext:
    return pytest.raises(DataError, match="^" + re.escape(message) + "$")


def _truncated_message(path: Path, shape: str, dtype: str, size: int) -> str:
    return (
        f"{path}: truncated NIfTI file: the header declares a {shape} {dtype} array ({size} bytes) "
        "but the data ends early; copy or export the file again"
    )


# A signed ramp with values that differ in both bytes, so a byte-order mix-up cannot go unnoticed.
SIGNED = (np.arange(256 * 128) % 3001 - 1500).astype(np.int16).reshape(256, 128)


def test_big_endian_int16_hipmri_slice_reads_the_written_values(tmp_path: Path) -> None:
    path = _nii(tmp_path / "case_004_week_0_slice_0.nii.gz", SIGNED, big_endian=True)
    stored = nib.load(path)
    assert stored.header.endianness == ">" and stored.get_data_dtype() == np.dtype(">i2")
    image = hipmri.load_slice(path, (256, 128))
    np.testing.assert_allclose(image[0].numpy(), _minmax(SIGNED), atol=1e-6)


def test_big_endian_int16_volumes_read_the_written_values(tmp_path: Path) -> None:
    volume = (np.arange(16 * 20 * 12) % 997 - 400).astype(np.int16).reshape(16, 20, 12)
    path = _nii(tmp_path / "1000001_20253_2_0_flair.nii", volume, big_endian=True)
    little = _nii(tmp_path / "little.nii", volume.astype(np.float32))
    assert torch.equal(flair.load_volume(path, 32), flair.load_volume(little, 32))
    # oasis (nifti layout): the middle slice along the first axis, min-max scaled, at its own size.
    middle = oasis.load_volume_slice(path, (20, 12))
    np.testing.assert_allclose(middle[0].numpy(), _minmax(volume[8]), atol=1e-6)


def test_hipmri_trailing_singleton_and_256x144(tmp_path: Path) -> None:
    rows = np.repeat(np.arange(256, dtype=np.float32)[:, None], 128, axis=1)
    plain = hipmri.load_slice(_nii(tmp_path / "a.nii.gz", rows), (256, 128))
    np.testing.assert_allclose(plain[0].numpy(), _minmax(rows), atol=1e-6)
    squeezed = hipmri.load_slice(_nii(tmp_path / "b.nii.gz", rows[..., None]), (256, 128))
    assert torch.equal(squeezed, plain)
    # 256x144 is resized to 256x128 (hipmri.py: antialiased bilinear); rows constant along W stay exact.
    wide = np.repeat(np.arange(256, dtype=np.float32)[:, None], 144, axis=1)
    resized = hipmri.load_slice(_nii(tmp_path / "c.nii.gz", wide), (256, 128))
    assert resized.shape == (1, 256, 128)
    np.testing.assert_allclose(resized[0].numpy(), _minmax(rows), atol=1e-6)


def test_truncated_nii_gz_names_the_file_and_the_declared_array(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).uniform(0, 1000, (256, 128)).astype(np.float32)  # compresses poorly
    path = _truncate(_nii(tmp_path / "case_004_week_0_slice_0.nii.gz", noisy))
    with _raises_exactly(_truncated_message(path, "256x128", "float32", 131072)):
        hipmri.load_slice(path, (256, 128))
    volume = np.random.default_rng(1).uniform(0, 1000, (24, 28, 24)).astype(np.float32)
    path = _truncate(_nii(tmp_path / "1000001_20253_2_0_flair.nii.gz", volume))
    message = _truncated_message(path, "24x28x24", "float32", 64512)
    with _raises_exactly(message):
        flair.load_volume(path, 32)
    with _raises_exactly(message):
        oasis.load_volume_slice(path, (64, 64))
    # Through the volume cache, the same message (a truncated file is never cached).
    folder = tmp_path / "ukb"
    for index in range(3):
        _nii(folder / f"100000{index}_20253_2_0_flair.nii.gz", volume)
    data = BiobankFlair(folder).split("train")
    _truncate(data.files[0])
    with _raises_exactly(_truncated_message(data.files[0], "24x28x24", "float32", 64512)):
        data[0]


def test_truncated_header_is_not_a_nifti(tmp_path: Path) -> None:
    path = tmp_path / "case_004_week_0_slice_0.nii.gz"
    _nii(path, SIGNED)
    path.write_bytes(path.read_bytes()[:40])
    message = (
        f'{path}: cannot read NIfTI file (ImageFileError: Cannot work out file type of "{path}"); '
        "expected a NIfTI-1 or NIfTI-2 image (.nii, or gzip-compressed .nii.gz)"
    )
    with _raises_exactly(message):
        hipmri.load_slice(path, (256, 128))


def test_rgba_pngs_lose_alpha_without_error(tmp_path: Path) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (256, 2))  # 256x512 CT|MR
    alpha = np.full((256, 512, 1), 7, np.uint8)
    rgba = np.concatenate([np.repeat(grey[..., None], 3, axis=2), alpha], axis=2)
    a_grey, b_grey = gold.load_pair(_png(tmp_path / "grey.png", grey), (256, 256))
    a_rgba, b_rgba = gold.load_pair(_png(tmp_path / "rgba.png", rgba), (256, 256))
    assert Image.open(tmp_path / "rgba.png").mode == "RGBA"
    assert torch.equal(a_rgba, a_grey) and torch.equal(b_rgba, b_grey)
    assert a_grey[0, 0, 255] == 1.0  # 255 -> 1, not a mix with the alpha of 7
    slice_grey = oasis.load_png_slice(_png(tmp_path / "slice.png", grey[:, :256]), (256, 256))
    slice_rgba = oasis.load_png_slice(_png(tmp_path / "slice_rgba.png", rgba[:, :256]), (256, 256))
    assert torch.equal(slice_rgba, slice_grey)
    colour = np.concatenate(
        [np.full((256, 256, 3), (200, 100, 50), np.uint8), np.full((256, 256, 3), 180, np.uint8)], axis=1
    )
    a, b = sent.load_pair(sent.Source(_png(tmp_path / "sent.png", np.concatenate([colour, alpha], axis=2))), (8, 8))
    assert torch.allclose(a[:, 0, 0], torch.tensor([200, 100, 50]) / 255 * 2 - 1) and b.shape == (1, 8, 8)


def test_odd_width_side_by_side_pngs(tmp_path: Path) -> None:
    path = _png(tmp_path / "1_01_P_37.png", np.zeros((256, 513), np.uint8))
    with _raises_exactly(f"{path}: expected a side-by-side CT|MR pair of width 2 x height, got 256x513 (HxW)"):
        gold.load_pair(path, (256, 256))
    path = _png(tmp_path / "1021.png", np.zeros((256, 511, 3), np.uint8))
    with _raises_exactly(f"{path}: expected a side-by-side RGB|NDVI pair of width 2 x height, got 256x511 (HxW)"):
        sent.load_pair(sent.Source(path), (256, 256))


def test_empty_split_folders(tmp_path: Path) -> None:
    cases = [
        (HipMRI, "keras_slices_{}", ("train", "validate", "test"), "*.nii.gz or *.nii", hipmri.LAYOUT),
        (Gold, "{}", ("train", "val", "test"), "*.png", gold.LAYOUT),
        (Oasis, "keras_png_slices_{}", ("train", "validate", "test"), "*.png", oasis.PNG_LAYOUT),
    ]
    for cls, pattern, folders, globs, layout in cases:
        root = tmp_path / cls.name
        for folder in folders:
            (root / pattern.format(folder)).mkdir(parents=True)
        empty = root / pattern.format(folders[0])
        with _raises_exactly(f"split folder {empty} holds no {globs} files; expected layout: {layout}"):
            cls(root)
    root = tmp_path / "SENT"
    for folder in ("train", "val", "test"):
        (root / folder).mkdir(parents=True)
    message = f"split folder {root / 'train'} holds no *.png files and no data.zip; expected layout: {sent.LAYOUT}"
    with _raises_exactly(message):
        Sent(root)
