"""The ``oasis`` dataset plugin: 2D brain T1 MR slices, as COMP3710 PNG slices or raw 3D NIfTI volumes.

Reads OASIS-1 T1 brain MRI in the layouts of datasets.md §1.4 (the ``keras_png_slices_data``
PNG set, or a flat folder of 3D volumes sliced as seed 002 does, models.md §3.1) or seed 002's
own folder of 2D centre-slice NIfTIs (``layout: slices``, read and split as it does), and writes a
brain-phantom stand-in built on the real MNI152 anatomy in the PNG layout (:meth:`Oasis.make_embedded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, DataError, DataSpec
from bench_core.hookspecs import hookimpl
from bench_core.imagefiles import NIFTI_READ_ERRORS, nifti_data_error, open_nifti

from . import brain
from ._common import (
    check_options,
    check_root,
    files_of_split,
    fingerprint_files,
    fingerprint_spread,
    list_split_files,
    list_volumes,
    parse_size,
    resize,
    split_counts,
)

SPLIT_FOLDERS = {"train": "keras_png_slices_train", "val": "keras_png_slices_validate", "test": "keras_png_slices_test"}
"""Image folder of each split of the PNG layout; masks live in the same name with ``seg_`` after ``slices_``."""

LAYOUTS = ("png", "nifti", "slices")
PNG_LAYOUT = (
    "ROOT/keras_png_slices_{train,validate,test}/case_NNN_slice_S.nii.png "
    "(8-bit grayscale 256x256 PNGs; keras_png_slices_seg_* mask folders are ignored)"
)
NIFTI_LAYOUT = "ROOT/*.nii.gz or ROOT/*.nii: a flat folder of 3D T1 volumes (at least 3)"
SLICES_LAYOUT = (
    "ROOT/*.nii.gz or ROOT/*.nii: a flat folder of 2D NIfTI centre slices, one per volume, as seed 002's "
    "extract_slices.py writes them (at least 3)"
)
DEFAULT_SIZES = {"png": (256, 256), "nifti": (64, 64), "slices": (64, 64)}
SPLIT_SEED = 42
"""Seed of the volume-level split of the NIfTI layout (seed 002 uses 42)."""
TEST_DIVISOR = 20
"""Seed 002's ``--test 20``: ``len // 20`` volumes (5%) are test, then 5% of the rest are val."""
_OPTIONS = ("layout", "size")
# The COMP3710 loaders do Image.open(p).convert("L"); these 8-bit modes convert the same way.
_GREY_MODES = ("L", "LA", "RGB", "RGBA", "P")

# Embedded data: the real set has 32 axial slices per subject over the central brain; we write
# every 4th (slice_0, slice_4, ... slice_28) from the inferior to the superior end of that range.
_SLICES_PER_CASE = 32
_SLICE_STEP = 4
_SLICE_Z = (-0.3, 0.3)  # frame units: MNI z from -15 to 51 mm (temporal lobes to upper ventricles)
_PNG_SHAPE = (256, 256)
# 8-bit scaling of a slice: this percentile of brain voxels maps to 255 (robust to noise outliers).
_WHITE_PERCENTILE = 99.5


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def _png_stem(path: Path) -> str:
    # case_001_slice_0.nii.png -> case_001_slice_0
    name = path.name[: -len(".png")]
    return name[: -len(".nii")] if name.endswith(".nii") else name


def minmax(image: torch.Tensor) -> torch.Tensor:
    """Min-max scale a tensor to [-1, 1]; a constant image maps to -1."""
    low, high = image.min(), image.max()
    if high <= low:
        return torch.full_like(image, -1.0)
    # Clamping only absorbs float rounding, so the range is exactly [-1, 1].
    return ((image - low) / (high - low) * 2.0 - 1.0).clamp_(-1.0, 1.0)


def cover_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(C, h, w)`` keeping its aspect so that it covers ``size``, then centre-crop to ``size``.

    For a square ``size`` (D, D) this is torchvision's ``Resize(D)`` (shorter side to D) followed by
    ``CenterCrop(D)``, as seed 002 does; resizing is antialiased bilinear.
    """
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    # Rounding can land one pixel short of ``size``; never go below it.
    scaled = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    image = resize(image, scaled)
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return image[:, top : top + size[0], left : left + size[1]]


def load_png_slice(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Read one PNG slice as a float32 ``(1, H, W)`` tensor at ``size``, min-max scaled to [-1, 1].

    Colour PNGs are converted to grey as ``convert("L")`` does; the slice is resized (antialiased
    bilinear) when its shape differs from ``size``. Unreadable files and 16-bit or float images
    raise :class:`DataError` naming the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image.convert("L")) if mode in _GREY_MODES else None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
    if array is None:
        raise DataError(f"{path}: expected an 8-bit grayscale PNG, got mode {mode}")
    image = resize(torch.from_numpy(array.astype(np.float32))[None], size)
    return minmax(image)


def load_volume_slice(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The middle slice along the first array axis of a 3D NIfTI, as float32 ``(1, H, W)`` in [-1, 1].

    As seed 002: ``vol[shape[0] // 2]`` whatever the orientation (trailing singleton axes, as in
    some 4D-stored volumes, are dropped first), min-max scaled per slice to [-1, 1], then resized
    to cover ``size`` and centre-cropped. Unreadable files, non-3D arrays and NaN/Inf values in
    the slice raise :class:`DataError` naming the file.
    """
    proxy = open_nifti(path)
    shape = tuple(proxy.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(proxy.shape)}")
    # Slicing the array proxy reads only the middle slice, not the whole volume.
    index = (shape[0] // 2,) + (slice(None),) * 2 + (0,) * (len(proxy.shape) - 3)
    try:
        array = np.asarray(proxy.dataobj[index], dtype=np.float32)
    except NIFTI_READ_ERRORS as exc:
        raise nifti_data_error(path, proxy, exc) from exc
    if not np.isfinite(array).all():
        raise DataError(f"{path}: middle slice contains NaN or Inf values")
    image = minmax(torch.from_numpy(np.ascontiguousarray(array))[None])
    return cover_crop(image, size).clamp_(-1.0, 1.0)


def load_2d_slice(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A 2D NIfTI slice (seed 002's ``SLICES_PATH`` files) as float32 ``(1, H, W)`` in [-1, 1].

    As seed 002's ``OASISDataset``: the whole array (trailing singleton axes dropped) min-max
    scaled to [-1, 1], then resized so the shorter side fits and centre-cropped to ``size``.
    Unreadable files, arrays that are not 2D and NaN/Inf values raise :class:`DataError`.
    """
    proxy = open_nifti(path)
    shape = tuple(proxy.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 2:
        raise DataError(f"{path}: expected a 2D slice, got shape {tuple(proxy.shape)} (3D volumes: layout=nifti)")
    try:
        array = np.asarray(proxy.dataobj, dtype=np.float32).reshape(shape)
    except NIFTI_READ_ERRORS as exc:
        raise nifti_data_error(path, proxy, exc) from exc
    if not np.isfinite(array).all():
        raise DataError(f"{path}: slice contains NaN or Inf values")
    image = minmax(torch.from_numpy(np.ascontiguousarray(array))[None])
    return cover_crop(image, size).clamp_(-1.0, 1.0)


def split_like_source(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Seed 002's own split, as its ``torch.utils.data.random_split`` calls make it.

    ``test = len // 20`` items at the end of ``torch.randperm(len)`` drawn with a generator
    seeded 42, then ``val = len(rest) // 20`` at the end of a second ``randperm`` of the rest
    with a fresh generator seeded 42. The source lists its folder in ``os.listdir`` order
    (which depends on the file system); here the list is sorted first, so the split is the
    same on every machine. Each of test and val holds at least one file.
    """
    files = sorted(files)
    n_test = max(1, len(files) // TEST_DIVISOR)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    main, test = order[: len(files) - n_test], order[len(files) - n_test :]
    n_val = max(1, len(main) // TEST_DIVISOR)
    inner = torch.randperm(len(main), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    train = [main[i] for i in inner[: len(main) - n_val]]
    val = [main[i] for i in inner[len(main) - n_val :]]
    return {name: sorted(files[i] for i in part) for name, part in (("train", train), ("val", val), ("test", test))}


def split_volumes(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Seed 002's split of the NIfTI layout, made deterministic and never empty.

    ``len // 20`` volumes (5%, at least 1) chosen by a permutation seeded with :data:`SPLIT_SEED`
    are test, then ``rest // 20`` (at least 1) of the remaining ones, in the same permutation
    order, are val; the rest are train. Each split is returned in sorted file-name order.
    """
    files = sorted(files)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_test = max(1, len(files) // TEST_DIVISOR)
    n_val = max(1, (len(files) - n_test) // TEST_DIVISOR)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {name: sorted(files[i] for i in part) for name, part in (("train", train), ("val", val), ("test", test))}


class OasisSlices(Dataset):
    """One split of :class:`Oasis`: reads each file lazily in ``__getitem__``.

    Holds only paths, the layout and the target size, so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, files: Sequence[Path], size: tuple[int, int], layout: str) -> None:
        self.files = tuple(files)
        self.size = size
        self.layout = layout

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        if self.layout == "png":
            return {"image": load_png_slice(path, self.size), "id": _png_stem(path)}
        if self.layout == "slices":
            return {"image": load_2d_slice(path, self.size), "id": _nifti_stem(path)}
        return {"image": load_volume_slice(path, self.size), "id": _nifti_stem(path)}


class Oasis:
    """OASIS-1 brain T1 MR 2D slices for reconstruction, from PNG slices or raw 3D volumes.

    ``layout="png"`` (default): ``root/keras_png_slices_{train,validate,test}/case_NNN_slice_S.nii.png``,
    8-bit grey 256x256 skull-stripped axial slices (COMP3710 ``keras_png_slices_data``); the splits
    are the folders; mask folders (``keras_png_slices_seg_*``) are ignored. Ids drop ``.nii.png``.

    ``layout="nifti"``: ``root`` is a flat folder of 3D T1 volumes (``*.nii.gz``, ``*.nii``). As in
    seed 002, each yields its middle slice along the first array axis (``vol[shape[0] // 2]``, so
    the view depends on each file's orientation), min-max scaled to [-1, 1], resized so the
    shorter side fits (``Resize(D)``) and centre-cropped (``CenterCrop(D)``). The split is
    volume-level and deterministic (:func:`split_volumes`): a permutation seeded with 42 puts
    ``len // 20`` volumes (at least 1) in test and ``rest // 20`` (at least 1) in val; at least 3
    volumes are needed. Ids are the file stems.

    ``layout="slices"``: seed 002's own data layout, the folder its ``extract_slices.py`` writes:
    one 2D NIfTI per volume holding that volume's centre slice. Each is read as its
    ``OASISDataset`` does (min-max to [-1, 1], shorter side resized to D, centre crop), and the
    splits are the source's two ``random_split`` calls with generator seed 42
    (:func:`split_like_source`; the source's folder listing order is unsorted, ours sorted).

    In every layout each slice is min-max scaled per slice to [-1, 1] (a constant slice becomes
    -1), as seed 002 does; files are read lazily, each split in sorted file-name order.

    Options:
        layout: ``"png"``, ``"nifti"`` or ``"slices"`` (see above).
        size: ``[H, W]`` of the yielded images; default ``[256, 256]`` for ``png`` (the files'
            own size) and ``[64, 64]`` for ``nifti`` and ``slices`` (seed 002's final D = 64).
    """

    name = "oasis"
    version = "1.1"
    api_version = API_VERSION
    obtain = (
        "Request access at https://www.oasis-brains.org (OASIS-1, data use agreement; no redistribution): "
        "use the raw T1 volumes with layout=nifti, or the COMP3710 keras_png_slices_data set with layout=png."
    )

    def __init__(self, root: Path, layout: str = "png", size: Sequence[int] | None = None, **options: Any) -> None:
        check_options(self.name, options, _OPTIONS)
        if layout not in LAYOUTS:
            raise DataError(f"{self.name}: unknown layout {layout!r}; valid values: {', '.join(LAYOUTS)}")
        self.layout = layout
        self.size = parse_size(self.name, size, DEFAULT_SIZES[layout])
        if layout == "png":
            self.root = check_root(self.name, root, PNG_LAYOUT)
            self._files = {
                split: list_split_files(self.root, folder, ("*.png",), PNG_LAYOUT)
                for split, folder in SPLIT_FOLDERS.items()
            }
        elif layout == "slices":
            self.root = check_root(self.name, root, SLICES_LAYOUT)
            self._files = split_like_source(list_volumes(self.name, self.root, SLICES_LAYOUT))
        else:
            self.root = check_root(self.name, root, NIFTI_LAYOUT)
            self._files = split_volumes(list_volumes(self.name, self.root, NIFTI_LAYOUT))

    def spec(self) -> DataSpec:
        """Single-channel 2D images at ``size`` in [-1, 1]; split sizes from the file listing."""
        h, w = self.size
        source = {
            "png": "keras_png_slices PNG",
            "nifti": "middle slice of 3D NIfTI",
            "slices": "seed 002's 2D NIfTI centre slices",
        }[self.layout]
        return DataSpec(
            modalities=("image",),
            channels=(1,),
            dims=2,
            shape=self.size,
            value_range=(-1.0, 1.0),
            split_sizes={split: len(files) for split, files in self._files.items()},
            description=f"OASIS brain T1 MR slices ({source}), {h}x{w}, per-slice min-max",
        )

    def split(self, name: str) -> OasisSlices:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        return OasisSlices(files_of_split(self.name, self._files, name), self.size, self.layout)

    def fingerprint(self) -> str:
        """Hash of the files' relative paths, sizes and sampled bytes (spread through each volume for ``nifti``)."""
        files = [f for files in self._files.values() for f in files]
        # A volume's leading bytes are mostly background; PNG slices are small and compressed.
        return fingerprint_files(self.root, files) if self.layout != "nifti" else fingerprint_spread(self.root, files)

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write ``n`` phantom T1 axial slices (and masks) in the ``keras_png_slices`` PNG layout under ``root``.

        Splits get about 80/10/10% of the slices and disjoint subjects (case ids from 001, train
        first). Each subject is the real MNI152 anatomy of :mod:`.brain` (nilearn's bundled T1
        template and tissue maps) under a random affine and elastic warp, with a few T1-dark
        white-matter lesions (:func:`brain.subject_params`); it contributes up to eight axial
        slices ``slice_0``, ``slice_4``, ... ``slice_28`` spread over the central brain, each with
        its own bias field and Rician noise. Images are 8-bit grey 256x256 (99.5th percentile of the brain -> 255);
        masks in ``keras_png_slices_seg_*`` use the OASIS grey levels 0/85/170/255 (background,
        CSF, GM, WM with lesions). The same ``seed`` writes byte-identical files.
        """
        root = Path(root)
        case = 1
        for split, count in split_counts(n).items():
            image_dir = root / SPLIT_FOLDERS[split]
            seg_dir = root / SPLIT_FOLDERS[split].replace("slices_", "slices_seg_")
            image_dir.mkdir(parents=True, exist_ok=True)
            seg_dir.mkdir(parents=True, exist_ok=True)
            remaining = count
            while remaining > 0:
                # Seeding per case keeps a subject's images independent of n and of the split sizes.
                params = brain.subject_params(np.random.default_rng([seed, case]))
                slices = range(0, _SLICES_PER_CASE, _SLICE_STEP)[:remaining]
                for index in slices:
                    z = _SLICE_Z[0] + (_SLICE_Z[1] - _SLICE_Z[0]) * index / (_SLICES_PER_CASE - 1)
                    out = brain.render(params, np.random.default_rng([seed, case, index]), _PNG_SHAPE, "t1", z)
                    stem = f"{case:03d}_slice_{index}.nii.png"
                    Image.fromarray(_to_uint8(out["image"], out["labels"])).save(image_dir / f"case_{stem}")
                    Image.fromarray(brain.OASIS_SEG_LEVELS[out["labels"]]).save(seg_dir / f"seg_{stem}")
                remaining -= len(slices)
                case += 1


def _to_uint8(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    inside = image[labels > brain.BACKGROUND]
    white = np.percentile(inside, _WHITE_PERCENTILE) if inside.size else 1.0
    return np.round(np.clip(image / white, 0.0, 1.0) * 255.0).astype(np.uint8)


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``oasis`` dataset plugin."""
    return [Oasis]
