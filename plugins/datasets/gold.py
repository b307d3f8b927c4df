"""The ``gold`` dataset plugin: paired pelvis CT/T2-MR slices as side-by-side 8-bit PNGs.

Reads the Gold Atlas male pelvis set as preprocessed by ``phvae-mrict-preprocess``
(datasets.md §1.2) and writes a procedural pelvis-phantom stand-in in exactly that format
(:meth:`Gold.make_embedded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, SPLITS, DataError, DataSpec
from bench_core.hookspecs import hookimpl

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

LAYOUT = (
    "ROOT/{train,val,test}/{PatientID}_{loc}.png, 8-bit grayscale 256x512 PNGs: left half CT (A), right half T2 MR (B)"
)
PATTERNS = ("*.png",)
DEFAULT_SIZE = (256, 256)
_OPTIONS = ("size",)
# The preprocessing saves grayscale "L" PNGs; the reference loader reads them with cv2 as three
# identical channels and keeps the first, so colour files are accepted the same way.
_FIRST_BAND_MODES = ("RGB", "RGBA", "LA")

# Embedded data: slices per synthetic patient, their spacing in phantom slice_pos (loc counts
# hundredths of it), and the CT display window mapped to 0..255.
_SLICES_PER_PATIENT = 8
_LOC_STEP = 4
_CT_WINDOW = (-1000.0, 1000.0)


def load_pair(path: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one side-by-side PNG as ``(A, B)`` float32 ``(1, H, W)`` tensors at ``size`` in [-1, 1].

    8-bit values map linearly (0 -> -1, 255 -> 1), keeping the preprocessing's black background
    at -1 in both halves. Unreadable files, unsupported modes and files whose width is not twice
    their height raise :class:`DataError` naming the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
    if mode in _FIRST_BAND_MODES:
        array = array[..., 0]
    elif mode != "L":
        raise DataError(f"{path}: expected an 8-bit grayscale PNG, got mode {mode}")
    height, width = array.shape
    if width != 2 * height:
        raise DataError(f"{path}: expected a side-by-side CT|MR pair of width 2 x height, got {height}x{width} (HxW)")
    scaled = array.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    a, b = (torch.from_numpy(np.ascontiguousarray(half))[None] for half in (scaled[:, :height], scaled[:, height:]))
    # Clamping only absorbs float rounding, so the range is exactly [-1, 1].
    return resize(a, size).clamp_(-1.0, 1.0), resize(b, size).clamp_(-1.0, 1.0)


class GoldPairs(Dataset):
    """One split of :class:`Gold`: reads each PNG lazily in ``__getitem__``.

    Holds only paths and the target size, so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, files: Sequence[Path], size: tuple[int, int]) -> None:
        self.files = tuple(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        a, b = load_pair(path, self.size)
        return {"A": a, "B": b, "id": path.stem}


class Gold:
    """Gold Atlas male pelvis CT (A) / T2 MR (B) pairs for translation, as side-by-side PNGs.

    Layout: ``root/{train,val,test}/{PatientID}_{loc}.png`` (e.g. ``1_01_P_37.png``), 8-bit
    grayscale, 256x512: the left 256x256 half is the CT registered to the MR, the right half
    the T2 MR, both body-masked and min-max scaled by the preprocessing. Files are read lazily,
    in sorted file-name order. Each half is scaled linearly from 0..255 to [-1, 1] and, when
    ``size`` differs from its shape, resized with antialiased bilinear interpolation.

    Options:
        size: ``[H, W]`` of each yielded half (default ``[256, 256]``).
    """

    name = "gold"
    obtain = (
        "Gold Atlas male pelvis (Nyholm et al. 2018; request access on Zenodo record 583096), then build the "
        "side-by-side PNGs with the danhessres/phvae-mrict-preprocess scripts; or `bench data make gold DIR` "
        "for procedural stand-in pairs in the same format"
    )
    version = "1.0"
    api_version = API_VERSION

    def __init__(self, root: Path, size: Sequence[int] | None = None, **options: Any) -> None:
        check_options(self.name, options, _OPTIONS)
        self.size = parse_size(self.name, size, DEFAULT_SIZE)
        self.root = check_root(self.name, root, LAYOUT)
        self._files = {split: list_split_files(self.root, split, PATTERNS, LAYOUT) for split in SPLITS}

    def spec(self) -> DataSpec:
        """Paired single-channel 2D images A (CT) and B (MR) at ``size`` in [-1, 1]."""
        h, w = self.size
        return DataSpec(
            modalities=("A", "B"),
            channels=(1, 1),
            dims=2,
            shape=self.size,
            # Each modality's own range (API 1.1): both are 8-bit windowed PNG halves mapped onto [-1, 1].
            ranges=((-1.0, 1.0), (-1.0, 1.0)),
            split_sizes={split: len(files) for split, files in self._files.items()},
            description=f"Gold Atlas pelvis CT (A) / T2 MR (B) pairs (side-by-side 8-bit PNG), {h}x{w}",
        )

    def split(self, name: str) -> GoldPairs:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        return GoldPairs(files_of_split(self.name, self._files, name), self.size)

    def fingerprint(self) -> str:
        """Hash of the PNG files' relative paths, sizes and sampled leading bytes."""
        return fingerprint_files(self.root, [f for files in self._files.values() for f in files])

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write ``n`` phantom CT|MR pairs as GOLD-format PNGs under ``root``.

        Splits get about 80/10/10% of the pairs and disjoint synthetic patients (``S_01_P``,
        ``S_02_P``, ... train first), each contributing up to eight neighbouring slices. As in
        the real preprocessing, both halves are masked with the body mask; the CT is windowed
        to [-1000, 1000] HU and the MR min-max scaled inside the body. The same ``seed``
        writes byte-identical files.
        """
        root = Path(root)
        patient = 1
        for split, count in split_counts(n).items():
            folder = root / split
            folder.mkdir(parents=True, exist_ok=True)
            remaining = count
            while remaining > 0:
                # Seeding per patient keeps a patient's images independent of n and of the split sizes.
                rng = np.random.default_rng([seed, patient])
                params = phantoms.patient_params(rng)
                slices = min(_SLICES_PER_PATIENT, remaining)
                first = int(rng.integers(5, 96 - _LOC_STEP * _SLICES_PER_PATIENT))
                for index in range(slices):
                    loc = first + _LOC_STEP * index
                    out = phantoms.pelvis_phantom(np.random.default_rng([seed, patient, loc]), params, loc / 100)
                    pair = np.concatenate([_ct_to_unit(out["ct"], out["body"]), _mr_to_unit(out["mr"], out["body"])], 1)
                    png = np.round(pair * 255.0).astype(np.uint8)
                    Image.fromarray(png).save(folder / f"S_{patient:02d}_P_{loc}.png")
                remaining -= slices
                patient += 1


def _ct_to_unit(ct: np.ndarray, body: np.ndarray) -> np.ndarray:
    low, high = _CT_WINDOW
    return np.clip((ct - low) / (high - low), 0.0, 1.0) * body


def _mr_to_unit(mr: np.ndarray, body: np.ndarray) -> np.ndarray:
    inside = mr[body]
    low, high = inside.min(), inside.max()
    return np.clip((mr - low) / (high - low), 0.0, 1.0) * body


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``gold`` dataset plugin."""
    return [Gold]
