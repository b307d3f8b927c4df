"""The ``hipmri`` dataset plugin: 2D prostate T2 MR slices in the HipMRI ``keras_slices`` layout.

Reads the CSIRO HipMRI study as distributed for COMP3710 (datasets.md §1.3) and writes a
procedural pelvis-phantom stand-in in exactly that format (:meth:`HipMRI.make_embedded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, DataError, DataSpec
from bench_core.hookspecs import hookimpl
from bench_core.imagefiles import read_nifti

from . import phantoms
from ._common import (
    check_options,
    check_root,
    files_of_split,
    fingerprint_files,
    list_split_files,
    parse_size,
    resize,
    split_counts,
)

SPLIT_FOLDERS = {"train": "keras_slices_train", "val": "keras_slices_validate", "test": "keras_slices_test"}
"""Image folder of each split; labels live in the same name with ``seg_`` after ``keras_slices_``."""

LAYOUT = (
    "ROOT/keras_slices_{train,validate,test}/case_NNN_week_W_slice_S.nii.gz "
    "(2D NIfTI slices, mostly 256x128; optional keras_slices_seg_* label folders are ignored)"
)
PATTERNS = ("*.nii.gz", "*.nii")
DEFAULT_SIZE = (256, 128)
NORMALIZATIONS = ("minmax",)
_OPTIONS = ("size", "normalize")


# Embedded data: slices per patient-week, spacing of consecutive slices in phantom slice_pos,
# and the gain that turns the phantom's T2 signal (urine ~1) into raw-like magnitudes ~0..1000.
_SLICES_PER_WEEK = 8
_SLICE_STEP = 0.08
_RAW_GAIN = 750.0
_FIRST_CASE = 4


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def load_slice(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Read one HipMRI slice as a float32 ``(1, H, W)`` tensor at ``size``, min-max scaled to [-1, 1].

    A trailing singleton axis is dropped; other shapes are resized bilinearly. A constant
    slice (e.g. empty) maps to -1. Unreadable files, non-2D arrays and NaN/Inf values raise
    :class:`DataError` naming the file.
    """
    array = read_nifti(path)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2D slice (H, W) or (H, W, 1), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    image = resize(torch.from_numpy(np.ascontiguousarray(array))[None], size)
    low, high = image.min(), image.max()
    if high <= low:
        return torch.full_like(image, -1.0)
    # Clamping only absorbs float rounding, so the range is exactly [-1, 1].
    return ((image - low) / (high - low) * 2.0 - 1.0).clamp_(-1.0, 1.0)


class HipMRISlices(Dataset):
    """One split of :class:`HipMRI`: reads each file lazily in ``__getitem__``.

    Holds only paths and the target size, so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, files: Sequence[Path], size: tuple[int, int]) -> None:
        self.files = tuple(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        return {"image": load_slice(path, self.size), "id": _stem(path)}


class HipMRI:
    """HipMRI prostate T2 MR 2D slices (``keras_slices`` NIfTI layout) for reconstruction.

    Layout: ``root/keras_slices_{train,validate,test}/case_NNN_week_W_slice_S.nii.gz``; the
    splits ``train``, ``val`` and ``test`` map to these folders. Label folders
    (``keras_slices_seg_*``) may be present and are ignored. Files are read lazily, in sorted
    file-name order.

    Preprocessing per slice: any dtype is read as float32; a trailing singleton axis, as in
    some real files of shape (256, 128, 1), is dropped; slices of another shape (e.g. 256x144)
    and all slices when ``size`` differs from 256x128 are resized with antialiased bilinear
    interpolation; then the slice is min-max scaled to [-1, 1] (a constant slice becomes -1).

    Options:
        size: ``[H, W]`` of the yielded images (default ``[256, 128]``).
        normalize: intensity normalisation; only ``"minmax"`` (per slice, to [-1, 1]).
    """

    name = "hipmri"
    obtain = (
        "CSIRO HipMRI study processed 2D slices (HipMRI_study_keras_slices_data, distributed to UQ COMP3710 "
        "students); or `bench data make hipmri DIR` for procedural stand-in slices in the same layout"
    )
    version = "1.0"
    api_version = API_VERSION

    def __init__(
        self, root: Path, size: Sequence[int] | None = None, normalize: str = "minmax", **options: Any
    ) -> None:
        check_options(self.name, options, _OPTIONS)
        if normalize not in NORMALIZATIONS:
            valid = ", ".join(NORMALIZATIONS)
            raise DataError(f"{self.name}: unknown normalize {normalize!r}; valid values: {valid}")
        self.size = parse_size(self.name, size, DEFAULT_SIZE)
        self.root = check_root(self.name, root, LAYOUT)
        self._files = {
            split: list_split_files(self.root, folder, PATTERNS, LAYOUT) for split, folder in SPLIT_FOLDERS.items()
        }

    def spec(self) -> DataSpec:
        """Single-channel 2D images at ``size`` in [-1, 1]; split sizes from the file listing."""
        h, w = self.size
        return DataSpec(
            modalities=("image",),
            channels=(1,),
            dims=2,
            shape=self.size,
            value_range=(-1.0, 1.0),
            split_sizes={split: len(files) for split, files in self._files.items()},
            description=f"HipMRI prostate T2 MR slices (keras_slices NIfTI), {h}x{w}, per-slice min-max",
        )

    def split(self, name: str) -> HipMRISlices:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        return HipMRISlices(files_of_split(self.name, self._files, name), self.size)

    def fingerprint(self) -> str:
        """Hash of the image files' relative paths, sizes and sampled leading bytes."""
        return fingerprint_files(self.root, [f for files in self._files.values() for f in files])

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write ``n`` phantom T2 slices (and ``seg_`` label files) in the HipMRI layout under ``root``.

        Splits get about 80/10/10% of the slices and disjoint patients (case ids from 004 on,
        train first). Each patient contributes up to two treatment weeks of up to eight
        neighbouring slices; weeks differ in bladder filling and rectal gas. Images are
        float32 256x128 with raw-like magnitudes of about 0..1000; labels are uint8 0..5
        (background, body, bone, bladder, rectum, prostate). The same ``seed`` writes
        byte-identical files.
        """
        root = Path(root)
        case = _FIRST_CASE
        for split, count in split_counts(n).items():
            image_dir = root / SPLIT_FOLDERS[split]
            seg_dir = root / SPLIT_FOLDERS[split].replace("keras_slices_", "keras_slices_seg_")
            image_dir.mkdir(parents=True, exist_ok=True)
            seg_dir.mkdir(parents=True, exist_ok=True)
            remaining = count
            while remaining > 0:
                # Seeding per case keeps a patient's images independent of n and of the split sizes.
                rng = np.random.default_rng([seed, case])
                patient = phantoms.patient_params(rng)
                for week in (0, int(rng.integers(1, 7))):
                    session = patient if week == 0 else phantoms.session_params(rng, patient)
                    slices = min(_SLICES_PER_WEEK, remaining)
                    start = rng.uniform(0.0, 1.0 - _SLICE_STEP * (_SLICES_PER_WEEK - 1))
                    for index in range(slices):
                        slice_rng = np.random.default_rng([seed, case, week, index])
                        # Rendered as (AP, LR) = 128x256 and transposed: in NIfTI voxel order the
                        # first axis runs left-right, giving HipMRI's 256x128 arrays.
                        position = start + _SLICE_STEP * index
                        out = phantoms.pelvis_phantom(slice_rng, session, position, shape=(128, 256))
                        stem = f"{case:03d}_week_{week}_slice_{index}.nii.gz"
                        image = np.ascontiguousarray(out["mr"].T * _RAW_GAIN, dtype=np.float32)
                        labels = np.ascontiguousarray(phantoms.SEG_LUT[out["labels"]].T)
                        nib.save(nib.Nifti1Image(image, np.eye(4)), image_dir / f"case_{stem}")
                        nib.save(nib.Nifti1Image(labels, np.eye(4)), seg_dir / f"seg_{stem}")
                    remaining -= slices
                    if remaining == 0:
                        break
                case += 1


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``hipmri`` dataset plugin."""
    return [HipMRI]
