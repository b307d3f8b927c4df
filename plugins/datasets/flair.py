"""The ``biobank-flair`` dataset plugin: 3D brain FLAIR volumes as a flat folder of NIfTI files.

Reads UK Biobank T2 FLAIR volumes as the 3d_very_deep_vae pipeline expects them (datasets.md
§1.5, models.md §2.5) with that pipeline's validation preprocessing, and writes a brain-phantom
stand-in built on the real MNI152 anatomy in exactly that format (:meth:`BiobankFlair.make_embedded`).
Preprocessed volumes are cached on disk (:class:`VolumeCache`), so 3D epochs after the first are
not bound by gzip decoding and resizing.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, SPLITS, DataError, DataSpec, cache_dir
from bench_core.hookspecs import hookimpl
from bench_core.imagefiles import read_nifti

from . import brain
from ._common import check_options, check_root, files_of_split, fingerprint_spread, list_volumes

LAYOUT = "ROOT/*.nii or ROOT/*.nii.gz: a flat folder of 3D skull-stripped FLAIR volumes (at least 3)"
RESOLUTIONS = (32, 64, 128)
DEFAULT_RESOLUTION = 32
PERCENTILES = (0.05, 99.95)
"""Intensity percentiles (of the whole resized volume, background included) the volume is clamped to."""
SPLIT_SEED = 0
"""Seed of the permutation that picks the held-out test volumes."""
TEST_FRACTION = 0.05
TRAIN_FRACTION = 0.95
"""The source's ``train_frac``: the first 95% of the non-test volumes (sorted) train, the rest validate."""
_OPTIONS = ("resolution", "cache")
VOLUME_CACHE_FORMAT = 1
"""Bump when the cached arrays change meaning without the plugin version changing."""
_HASH_CHUNK = 1 << 20

# Embedded data: a 48x56x48 grid keeps the 181:217:181 proportions of the SPM/MNI box at ~3.9 mm,
# and raw-like float magnitudes (brightest tissue ~1000).
_GRID = (48, 56, 48)
_VOXEL_MM = 2.0 * brain.FRAME_HALF_MM / max(_GRID)
_RAW_GAIN = 1000.0
_FIRST_EID = 1000001


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def resize_volume(volume: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a ``(C, X, Y, Z)`` volume to ``(C, R, R, R)`` without keeping the aspect ratio (as MONAI ``Resize``).

    Axes longer than ``R`` shrink by area averaging (``F.interpolate(mode="area")``, MONAI's
    default mode, i.e. the mean of the input voxels each output voxel covers); axes shorter than
    ``R`` then grow trilinearly (``align_corners=False``), since area "upsampling" would only
    repeat voxels. Real 181x217x181 volumes only shrink, so for them this is exactly the source.
    """
    shape = tuple(volume.shape[1:])
    target = (resolution,) * 3
    shrunk = tuple(min(s, resolution) for s in shape)
    x = volume[None]
    if shrunk != shape:
        x = F.interpolate(x, size=shrunk, mode="area")
    if shrunk != target:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    return x[0]


def normalise_volume(volume: torch.Tensor) -> torch.Tensor:
    """Clamp to the 0.05-99.95 percentiles, z-score, and rescale to [-1, 1], as the source's validation pipeline.

    Percentiles (numpy's linear interpolation) are over the whole volume, zero background
    included. The source then z-scores the whole volume and min-max rescales it to [-1, 1]
    (MONAI ``ScaleIntensity(minv=-1, maxv=1)``); a z-score is an increasing affine map, which a
    min-max rescale cancels exactly, so the result is ``2 (c - min c) / (max c - min c) - 1`` of
    the clamped volume ``c`` and the z-score is not computed separately. A constant volume maps
    to -1 (MONAI would give 0), like the other plugins' empty images.
    """
    array = volume.numpy()
    low, high = np.percentile(array, PERCENTILES)
    clamped = volume.clamp(float(low), float(high))
    c_low, c_high = clamped.min(), clamped.max()
    if c_high <= c_low:
        return torch.full_like(volume, -1.0)
    # Clamping only absorbs float rounding, so the range is exactly [-1, 1].
    return ((clamped - c_low) / (c_high - c_low) * 2.0 - 1.0).clamp_(-1.0, 1.0)


def load_volume(path: Path, resolution: int) -> torch.Tensor:
    """Read one 3D NIfTI as a float32 ``(1, R, R, R)`` tensor in [-1, 1].

    Resized by :func:`resize_volume`, normalised by :func:`normalise_volume`. Trailing singleton
    axes (a 4D file with one volume) are dropped. Unreadable files, non-3D arrays and NaN/Inf
    values raise :class:`DataError` naming the file.
    """
    array = read_nifti(path)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    volume = resize_volume(torch.from_numpy(np.ascontiguousarray(array))[None], resolution)
    return normalise_volume(volume)


def split_files(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Deterministic volume-level split: held-out test, then the source's 95/5 train/val of the rest.

    The source has no test split, so ``floor(5%)`` of the volumes (at least 1), the last ones of
    a permutation seeded with :data:`SPLIT_SEED`, are held out as test. The others, in sorted
    order, are split as the source's ``train_frac = 0.95``: the first ``floor(0.95 m)`` train and
    the rest val (at least 1). Each split is returned in sorted file-name order.
    """
    files = sorted(files)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_test = max(1, math.floor(TEST_FRACTION * len(files)))
    test = sorted(files[i] for i in order[len(files) - n_test :])
    rest = sorted(set(files) - set(test))
    n_train = min(math.floor(TRAIN_FRACTION * len(rest)), len(rest) - 1)
    return {"train": rest[:n_train], "val": rest[n_train:], "test": test}


def file_digest(path: Path) -> str:
    """SHA-256 of the whole file, streamed.

    The volume cache's key. Size and mtime could miss a rewrite of the same size within the
    clock's resolution, and sampled bytes could miss a local edit; hashing the whole file costs
    about 6 ms for an 8 MB 181x217x181 ``.nii.gz`` and 23 ms for its 28 MB ``.nii`` on this
    project's 2-core machine, against 150-280 ms (``.nii.gz``) and 50-130 ms (``.nii``) to decode,
    resize and normalise it.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class VolumeCache:
    """Preprocessed volumes as ``.npy`` files named by a key of the source content and the preprocessing.

    Entries are written to a unique temporary file and moved into place with ``os.replace``, so
    concurrent DataLoader workers or processes never read a partial file: two writers of one key
    both write the same bytes and the last rename wins. Reads use ``np.load(mmap_mode="r")``.
    A folder that cannot be written turns caching off for this process with a warning; an entry
    that cannot be read is recomputed and rewritten.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._writable = True

    def key(self, path: Path, resolution: int) -> str:
        """The entry of ``path`` preprocessed at ``resolution``: its content digest plus every preprocessing choice."""
        recipe = (
            f"{BiobankFlair.name} {BiobankFlair.version} format={VOLUME_CACHE_FORMAT} resolution={resolution} "
            f"percentiles={PERCENTILES[0]!r},{PERCENTILES[1]!r}"
        )
        return hashlib.sha256(f"{recipe}\n{file_digest(path)}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        """File of entry ``key``."""
        return self.folder / f"{key}.npy"

    def load(self, key: str, resolution: int) -> torch.Tensor | None:
        """The cached ``(1, R, R, R)`` volume of ``key``, or ``None`` when absent or unreadable."""
        try:
            array = np.load(self.path(key), mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        if array.shape != (1,) + (resolution,) * 3 or array.dtype != np.float32:
            return None
        # A private copy: the memory map stays read-only and the batch may be modified in place.
        return torch.from_numpy(np.array(array))

    def store(self, key: str, volume: torch.Tensor) -> None:
        """Write ``volume`` as entry ``key`` atomically (temporary file, then ``os.replace``)."""
        if not self._writable:
            return
        tmp = self.folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as handle:
                np.save(handle, volume.numpy())
            os.replace(tmp, self.path(key))
        except OSError as exc:
            self._writable = False
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            warnings.warn(
                f"biobank-flair: cannot write the volume cache in {self.folder} ({exc}); reading volumes uncached. "
                "Set BENCH_CACHE_DIR to a writable folder or pass the dataset option cache: false.",
                stacklevel=2,
            )


class FlairVolumes(Dataset):
    """One split of :class:`BiobankFlair`: reads each volume lazily in ``__getitem__``.

    Holds only paths, the resolution and the cache folder, so it pickles cheaply into DataLoader
    workers. With a :class:`VolumeCache`, a volume is decoded, resized and normalised once; later
    reads (later epochs, other processes) hash the file and load the cached array.
    """

    def __init__(self, files: Sequence[Path], resolution: int, cache: VolumeCache | None = None) -> None:
        self.files = tuple(files)
        self.resolution = resolution
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        return {"image": self._volume(path), "id": _stem(path)}

    def _volume(self, path: Path) -> torch.Tensor:
        if self.cache is None:
            return load_volume(path, self.resolution)
        try:
            key = self.cache.key(path, self.resolution)
        except OSError as exc:
            raise DataError(f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
        volume = self.cache.load(key, self.resolution)
        if volume is None:
            volume = load_volume(path, self.resolution)
            self.cache.store(key, volume)
        return volume


class BiobankFlair:
    """UK Biobank 3D brain FLAIR volumes (skull-stripped, MNI-aligned NIfTI) for 3D reconstruction and sampling.

    Layout: a flat folder of 3D NIfTI files ``root/*.nii`` and ``root/*.nii.gz`` (e.g.
    ``1234567_20253_2_0_flair.nii``), typically 181x217x181 at 1 mm; other files are ignored.
    Files are read lazily; ids are the file names without ``.nii``/``.nii.gz``.

    Preprocessing per volume (the 3d_very_deep_vae validation pipeline, without augmentation):
    resize to R^3 ignoring the aspect ratio (:func:`resize_volume`: area averaging when
    shrinking), clamp to the 0.05-99.95 intensity percentiles, z-score, rescale to [-1, 1]
    (:func:`normalise_volume`: min-max of the clamped volume). Items are
    ``{"image": (1, R, R, R) float32, "id": stem}``.

    Splits (:func:`split_files`, needs at least 3 volumes): ``floor(5%)`` (at least 1) of the
    volumes, picked by a permutation seeded with 0, are test; of the rest in sorted order the
    first ``floor(95%)`` are train and the remainder (at least 1) val.

    Decoded volumes are cached (:class:`VolumeCache`) as float32 ``.npy`` under
    ``bench_core.api.cache_dir() / "volumes"``, keyed by the SHA-256 of the file and the
    preprocessing (R, percentiles, plugin version), so epochs after the first skip gzip
    decoding and resizing. Entries are never evicted; delete the folder to reclaim space.

    Options:
        resolution: R, one of 32, 64, 128 (default 32).
        cache: keep preprocessed volumes in the volume cache (default true).
    """

    name = "biobank-flair"
    version = "1.1"
    api_version = API_VERSION
    obtain = (
        "UK Biobank application required (https://www.ukbiobank.ac.uk, field 20253 T2 FLAIR); no redistribution. "
        "Use the skull-stripped, MNI-aligned FLAIR NIfTI volumes as one flat folder."
    )

    def __init__(self, root: Path, resolution: int = DEFAULT_RESOLUTION, cache: bool = True, **options: Any) -> None:
        check_options(self.name, options, _OPTIONS)
        if isinstance(resolution, bool) or resolution not in RESOLUTIONS:
            valid = ", ".join(map(str, RESOLUTIONS))
            raise DataError(f"{self.name}: option resolution must be one of {valid}, got {resolution!r}")
        if not isinstance(cache, bool):
            raise DataError(f"{self.name}: option cache must be true or false, got {cache!r}")
        self.resolution = int(resolution)
        self.cache = VolumeCache(cache_dir() / "volumes") if cache else None
        self.root = check_root(self.name, root, LAYOUT)
        self._files = split_files(list_volumes(self.name, self.root, LAYOUT))

    def spec(self) -> DataSpec:
        """Single-channel 3D volumes of shape (R, R, R) in [-1, 1]; split sizes from the file listing."""
        r = self.resolution
        return DataSpec(
            modalities=("image",),
            channels=(1,),
            dims=3,
            shape=(r, r, r),
            value_range=(-1.0, 1.0),
            split_sizes={split: len(files) for split, files in self._files.items()},
            description=f"UK Biobank brain FLAIR volumes (NIfTI), {r}^3 area-resized, percentile clamp, [-1, 1]",
        )

    def split(self, name: str) -> FlairVolumes:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        return FlairVolumes(files_of_split(self.name, self._files, name), self.resolution, self.cache)

    def fingerprint(self) -> str:
        """Hash of the volumes' relative paths and sizes, and of bytes spread through a sample of them."""
        return fingerprint_spread(self.root, [f for files in self._files.values() for f in files])

    @classmethod
    def make_embedded(cls, root: Path, n: int = 16, seed: int = 0) -> None:
        """Write ``n`` phantom FLAIR volumes as ``{eid}_20253_2_0_flair.nii`` under ``root``.

        Each subject is the MNI152 anatomy of :mod:`.brain` (nilearn's bundled template) under a
        random affine and elastic warp, with 1 to 12 periventricular white-matter lesions
        (:func:`brain.subject_params`), rendered with the FLAIR contrast (CSF nulled, GM brighter
        than WM, lesions brightest), a bias field and Rician noise, and skull-stripped (zero
        outside the warped brain mask). Volumes are float32 48x56x48 on the SPM/MNI box
        (181:217:181 proportions at ~3.9 mm, isotropic affine, RAS), brightest tissue ~1000. Eids
        run from 1000001. The same ``seed`` writes byte-identical files.
        """
        root = Path(root)
        if n < len(SPLITS):
            raise DataError(f"embedded data needs at least {len(SPLITS)} items (one per split), got n={n}")
        root.mkdir(parents=True, exist_ok=True)
        affine = np.diag([_VOXEL_MM, _VOXEL_MM, _VOXEL_MM, 1.0])
        # MNI millimetres: the grid is centred on the frame centre the phantom is rendered around.
        affine[:3, 3] = brain.FRAME_CENTRE_MM - _VOXEL_MM * (np.array(_GRID) - 1) / 2.0
        for index in range(n):
            rng = np.random.default_rng([seed, index])
            out = brain.render(brain.subject_params(rng), rng, _GRID, "flair")
            volume = (out["image"] * _RAW_GAIN).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, affine), root / f"{_FIRST_EID + index}_20253_2_0_flair.nii")


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``biobank-flair`` dataset plugin."""
    return [BiobankFlair]
