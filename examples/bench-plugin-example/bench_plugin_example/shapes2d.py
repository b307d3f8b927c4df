"""The ``shapes2d`` dataset plugin: 8-bit grayscale PNG images in ``train``/``val``/``test`` folders.

A dataset plugin is a reader for one on-disk format. This one reads
``ROOT/{train,val,test}/*.png`` (every image of one size, mode ``L``) and yields
``{"image": (1, H, W) float32 in [0, 1], "id": file stem}``. It can also write its own
embedded data (:meth:`Shapes2D.make_embedded`): one procedural shape (disc, square or
triangle) per image on a shaded background with mild noise, written in exactly the
format the reader expects, so a suite can say ``root: embedded`` and the real reader
is what gets tested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench_core.api import SPLITS, DataError, DataSpec
from bench_core.hookspecs import hookimpl

LAYOUT = "ROOT/{train,val,test}/*.png (8-bit grayscale, every image of one size)"
SHAPES = ("disc", "square", "triangle")
EMBEDDED_SIZE = (32, 32)
"""Height and width of the images :meth:`Shapes2D.make_embedded` writes."""

_SUPERSAMPLE = 4  # shapes are rendered at 4x and box-filtered down, for anti-aliased edges
_NOISE_STD = 0.02
_FINGERPRINT_SAMPLES = 16  # files whose bytes enter the fingerprint (evenly spaced, ends included)


def load_png(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """Read one image as a float32 ``(1, H, W)`` tensor in ``[0, 1]``.

    Raises :class:`DataError` naming the file when it cannot be decoded, is not 8-bit
    grayscale, or does not have ``shape`` (the dataset declares one shape for all items).
    """
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise DataError(f"{path}: expected an 8-bit grayscale (mode L) image, got mode {image.mode}")
            width, height = image.size
            if (height, width) != tuple(shape):
                raise DataError(f"{path}: image is {height}x{width}, the dataset's images are {shape[0]}x{shape[1]}")
            array = np.asarray(image, dtype=np.uint8)
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


class ShapesSplit(Dataset):
    """One split of :class:`Shapes2D`; reads each file in ``__getitem__``.

    Holds only paths and the image shape, so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, files: Sequence[Path], shape: tuple[int, int]) -> None:
        self.files = tuple(files)
        self.shape = shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        # The id names the output images of this item, so keep it unique across splits.
        return {"image": load_png(path, self.shape), "id": path.stem}


class Shapes2D:
    """Procedural 2D shapes as 8-bit PNG files, for reconstruction and sampling.

    Layout: ``root/{train,val,test}/*.png``, read in sorted file-name order. The image
    shape is taken from the first file and every other file must match it. Values are
    the 8-bit grey levels divided by 255, so the declared range is ``[0, 1]``.

    The plugin takes no options.
    """

    name = "shapes2d"
    # Bump `version` when the reader or make_embedded changes what items contain: the engine
    # keys its embedded-data cache and checkpoints by it.
    version = "1.0"
    api_version = 1
    # Shown by `bench run` when a suite points `root:` at a folder that does not exist.
    obtain = "write a synthetic copy with `bench data make shapes2d DIR`"

    def __init__(self, root: Path, **options: Any) -> None:
        if options:
            raise DataError(f"{self.name} takes no options; got {', '.join(sorted(options))}")
        self.root = Path(root)
        self._files: dict[str, list[Path]] = {}
        for split in SPLITS:
            folder = self.root / split
            if not folder.is_dir():
                raise DataError(f"{self.name}: split folder {folder} does not exist; expected layout: {LAYOUT}")
            self._files[split] = sorted(folder.glob("*.png"))
        first = next((f for split in SPLITS for f in self._files[split]), None)
        if first is None:
            raise DataError(f"{self.name}: no .png files under {self.root}; expected layout: {LAYOUT}")
        try:
            with Image.open(first) as image:
                width, height = image.size
        except OSError as exc:
            raise DataError(f"{first}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
        self.shape = (height, width)

    def spec(self) -> DataSpec:
        """One grayscale 2D modality ``image`` in ``[0, 1]``; split sizes from the file listing."""
        return DataSpec(
            modalities=("image",),
            channels=(1,),
            dims=2,
            shape=self.shape,
            value_range=(0.0, 1.0),
            split_sizes={split: len(files) for split, files in self._files.items()},
            description=f"procedural shapes (disc, square, triangle), {self.shape[0]}x{self.shape[1]} 8-bit PNG",
        )

    def split(self, name: str) -> ShapesSplit:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in self._files:
            raise DataError(f"{self.name}: unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return ShapesSplit(self._files[name], self.shape)

    def fingerprint(self) -> str:
        """Hash of every file's relative path and size plus the bytes of a few evenly spaced files.

        Cheap whatever the dataset size (one listing, at most 16 reads), yet it changes
        when files are added, removed, renamed, resized or (for the sampled ones) edited.
        The engine keys checkpoints by it, so retraining follows a change of data.
        """
        files = [f for split in SPLITS for f in self._files[split]]
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.relative_to(self.root).as_posix()}\t{path.stat().st_size}\n".encode())
        picks = np.unique(np.linspace(0, len(files) - 1, min(_FINGERPRINT_SAMPLES, len(files))).round().astype(int))
        for index in picks:
            digest.update(files[index].read_bytes())
        return digest.hexdigest()[:20]

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write ``n`` procedural shape images under ``root`` in the layout the reader expects.

        About 70/15/15% of the items go to train/val/test (at least one per split). Item
        ``i`` is drawn from its own generator seeded with ``(seed, i)``, so the same
        ``seed`` writes byte-identical files; file names ``NNNNN_<shape>.png`` are unique
        across splits.
        """
        if n < len(SPLITS):
            raise DataError(f"{cls.name}: embedded data needs at least {len(SPLITS)} items (one per split), got {n}")
        held_out = max(1, round(0.15 * n))
        counts = {"train": n - 2 * held_out, "val": held_out, "test": held_out}  # train >= 1 for n >= 3
        index = 0
        for split, count in counts.items():
            folder = Path(root) / split
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                rng = np.random.default_rng([seed, index])
                kind = SHAPES[int(rng.integers(len(SHAPES)))]
                pixels = np.round(render_shape(rng, kind, EMBEDDED_SIZE) * 255.0).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:05d}_{kind}.png")  # uint8 (H, W): mode L
                index += 1


def render_shape(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """One ``kind`` shape at a random position, size, rotation and brightness; float64 ``shape`` in [0, 1].

    The background is a linear ramp of random direction between grey levels 0.05 and
    0.25; the shape is a flat grey level in [0.5, 1]; Gaussian noise (std 0.02) is added
    and the result clipped to [0, 1].
    """
    height, width = shape
    s = _SUPERSAMPLE
    # Pixel-centre coordinates in units of the shorter side, on the supersampled grid.
    scale = min(height, width)
    yy, xx = np.mgrid[0 : height * s, 0 : width * s]
    y, x = (yy + 0.5) / (s * scale), (xx + 0.5) / (s * scale)
    cy = rng.uniform(0.35, 0.65) * height / scale
    cx = rng.uniform(0.35, 0.65) * width / scale
    radius = rng.uniform(0.15, 0.3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    # Rotated coordinates relative to the centre.
    u = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
    v = -np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)
    if kind == "disc":
        inside = u**2 + v**2 <= radius**2
    elif kind == "square":
        half = radius / np.sqrt(2.0)  # same circumradius as the other shapes
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    elif kind == "triangle":
        # Equilateral triangle with circumradius `radius`: inside all three edge half-planes,
        # each at distance radius / 2 from the centre along its normal.
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        inside = np.ones_like(u, dtype=bool)
        for nu, nv in normals:
            inside &= nu * u + nv * v <= radius / 2.0
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(SHAPES)}")
    coverage = inside.reshape(height, s, width, s).mean(axis=(1, 3))  # box filter back to the target grid
    ramp_angle = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = np.cos(ramp_angle) * xs / max(width - 1, 1) + np.sin(ramp_angle) * ys / max(height - 1, 1)
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-12)
    background = 0.05 + 0.2 * ramp
    brightness = rng.uniform(0.5, 1.0)
    image = background * (1.0 - coverage) + brightness * coverage
    return np.clip(image + rng.normal(0.0, _NOISE_STD, size=shape), 0.0, 1.0)


@hookimpl
def bench_datasets() -> list[type]:
    """Register :class:`Shapes2D`."""
    return [Shapes2D]
