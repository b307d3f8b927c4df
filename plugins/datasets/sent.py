"""The ``sent`` dataset plugin: paired Sentinel-2 true-colour RGB / NDVI tiles as side-by-side PNGs.

Reads the SENT set (``SigmaRichards/ndvi-rgb-i2i-data``, datasets.md §1.1), loose or zipped per
split, and writes a procedural land-cover stand-in in exactly that format
(:meth:`Sent.make_embedded`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, SPLITS, DataError, DataSpec
from bench_core.hookspecs import hookimpl

from . import landcover
from ._common import check_options, check_root, fingerprint_files, parse_size, resize, split_counts

LAYOUT = (
    "ROOT/{train,val,test}/<int>.png (or ROOT/{train,val,test}/data.zip holding them), 8-bit RGB 256x512 PNGs: "
    "left half true-colour RGB (A), right half scaled NDVI in all 3 channels (B)"
)
ZIP_NAME = "data.zip"
DEFAULT_SIZE = (256, 256)
_OPTIONS = ("size",)
# cv2.imread(IMREAD_COLOR), the reference reader, turns every 8-bit image into 3 channels: grey is
# replicated, palettes expanded, alpha dropped. PIL's convert("RGB") does the same for these modes.
_COLOUR_MODES = ("RGB", "RGBA", "L", "LA", "P")
_SUBTILES = 4  # the real names end in a sub-tile digit 0-3 of a source tile; splits are by tile
_FIRST_TILE = 10


class Source:
    """Where one item's PNG bytes live: a loose file, or a member of a split's ``data.zip``."""

    def __init__(self, path: Path, member: str | None = None) -> None:
        self.path = path
        self.member = member

    @property
    def name(self) -> str:
        """Readable location for messages: the file, or ``zip:member``."""
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    @property
    def stem(self) -> str:
        """The item id: the PNG's file name without extension."""
        return self.path.stem if self.member is None else PurePosixPath(self.member).stem


def _zip_members(path: Path) -> list[str]:
    """PNG members of a split's zip, sorted by name (folders and macOS resource forks skipped)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read zip archive ({type(exc).__name__}: {exc})") from exc
    return sorted(n for n in names if n.lower().endswith(".png") and not n.startswith("__MACOSX/"))


def list_split(root: Path, split: str) -> list[Source]:
    """The sorted items of one split: loose ``*.png`` files, else the PNG members of ``data.zip``.

    Loose PNGs take precedence (an extracted copy next to its zip is read once); a missing
    folder or one with neither is a :class:`DataError` naming the folder.
    """
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"split folder {folder} does not exist; expected layout: {LAYOUT}")
    files = sorted(f for f in folder.glob("*.png") if f.is_file())
    if files:
        return [Source(f) for f in files]
    archive = folder / ZIP_NAME
    if archive.is_file():
        members = _zip_members(archive)
        if members:
            return [Source(archive, m) for m in members]
        raise DataError(f"{archive}: zip archive holds no .png files; expected layout: {LAYOUT}")
    raise DataError(f"split folder {folder} holds no *.png files and no {ZIP_NAME}; expected layout: {LAYOUT}")


def _read_bytes(source: Source, archives: dict[Path, zipfile.ZipFile]) -> bytes:
    if source.member is None:
        return source.path.read_bytes()
    if source.path not in archives:
        archives[source.path] = zipfile.ZipFile(source.path)
    return archives[source.path].read(source.member)


def load_pair(
    source: Source, size: tuple[int, int], archives: dict[Path, zipfile.ZipFile] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one side-by-side PNG as ``A`` (3, H, W) RGB and ``B`` (1, H, W) NDVI float32 tensors in [-1, 1].

    As the reference loader: 8-bit values map linearly (0 -> -1, 255 -> 1), alpha is dropped,
    grey or palette images become RGB, and B is the first channel of the right half. Each half is
    resized to ``size`` (antialiased bilinear) when it differs. Unreadable files, 16-bit or
    float images and images whose width is not twice their height raise :class:`DataError`
    naming the file (``zip:member`` for zipped items). ``archives`` caches open zip files.
    """
    try:
        data = _read_bytes(source, {} if archives is None else archives)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image.convert("RGB")) if mode in _COLOUR_MODES else None
    except (OSError, UnidentifiedImageError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{source.name}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
    if array is None:
        raise DataError(f"{source.name}: expected an 8-bit RGB PNG, got mode {mode}")
    height, width = array.shape[:2]
    if width != 2 * height:
        raise DataError(
            f"{source.name}: expected a side-by-side RGB|NDVI pair of width 2 x height, got {height}x{width} (HxW)"
        )
    scaled = array.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    a = torch.from_numpy(np.ascontiguousarray(scaled[:, :height].transpose(2, 0, 1)))
    b = torch.from_numpy(np.ascontiguousarray(scaled[:, height:, 0]))[None]
    # Clamping only absorbs float rounding, so the range is exactly [-1, 1].
    return resize(a, size).clamp_(-1.0, 1.0), resize(b, size).clamp_(-1.0, 1.0)


class SentPairs(Dataset):
    """One split of :class:`Sent`: reads each PNG (or zip member) lazily in ``__getitem__``.

    Holds paths and member names; open zip handles are cached per process and dropped when
    pickled, so each DataLoader worker opens its own.
    """

    def __init__(self, sources: Sequence[Source], size: tuple[int, int]) -> None:
        self.sources = tuple(sources)
        self.size = size
        self._archives: dict[Path, zipfile.ZipFile] = {}

    @property
    def files(self) -> tuple[str, ...]:
        """Location of each item (file or ``zip:member``), for error reports."""
        return tuple(s.name for s in self.sources)

    def __getstate__(self) -> dict[str, Any]:
        return {"sources": self.sources, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sources"], state["size"])

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.sources[index]
        a, b = load_pair(source, self.size, self._archives)
        return {"A": a, "B": b, "id": source.stem}


class Sent:
    """SENT Sentinel-2 true-colour RGB (A, 3 channels) / NDVI (B, 1 channel) pairs for translation.

    Layout: ``root/{train,val,test}/<int>.png`` (e.g. ``1020.png``), 8-bit RGB 256x512: the left
    256x256 half is true-colour RGB, the right half the scaled NDVI with all three channels
    equal. A split folder may instead hold ``data.zip`` with the PNGs (at any depth); members are
    read lazily from the zip. Loose PNGs take precedence over a zip in the same folder. Items are
    in sorted file-name (member-name) order; ids are the file stems.

    Each half is scaled linearly from 0..255 to [-1, 1] (the model's ``2x - 1`` of ``x/255``);
    B keeps the first channel of the right half; RGBA files lose their alpha. When ``size``
    differs from 256x256 each half is resized with antialiased bilinear interpolation.

    Options:
        size: ``[H, W]`` of each yielded half (default ``[256, 256]``).
    """

    name = "sent"
    version = "1.0"
    api_version = API_VERSION
    obtain = (
        "Public: clone https://github.com/SigmaRichards/ndvi-rgb-i2i-data (about 2.1 GB) and point root at its "
        "data/ folder (train/val/test of PNGs or data.zip); contains modified Copernicus Sentinel data 2023."
    )

    def __init__(self, root: Path, size: Sequence[int] | None = None, **options: Any) -> None:
        check_options(self.name, options, _OPTIONS)
        self.size = parse_size(self.name, size, DEFAULT_SIZE)
        self.root = check_root(self.name, root, LAYOUT)
        self._sources = {split: list_split(self.root, split) for split in SPLITS}

    def spec(self) -> DataSpec:
        """Paired 2D images: A true-colour RGB (3 channels), B NDVI (1 channel), at ``size`` in [-1, 1]."""
        h, w = self.size
        return DataSpec(
            modalities=("A", "B"),
            channels=(3, 1),
            dims=2,
            shape=self.size,
            value_range=(-1.0, 1.0),
            split_sizes={split: len(sources) for split, sources in self._sources.items()},
            description=f"SENT Sentinel-2 true-colour RGB (A) / scaled NDVI (B) pairs (side-by-side PNG), {h}x{w}",
        )

    def split(self, name: str) -> SentPairs:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in self._sources:
            raise DataError(f"{self.name}: unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return SentPairs(self._sources[name], self.size)

    def fingerprint(self) -> str:
        """Hash of the files' relative paths, sizes and sampled leading bytes, plus zip member names and CRCs.

        A zip's leading bytes cover only its first members; its central directory (names, sizes,
        CRC-32 of every member) is cheap to read and tracks changes anywhere inside.
        """
        files = sorted({s.path for sources in self._sources.values() for s in sources})
        digest = hashlib.sha256(fingerprint_files(self.root, files).encode())
        for path in files:
            if path.name == ZIP_NAME:
                with zipfile.ZipFile(path) as archive:
                    for info in sorted(archive.infolist(), key=lambda i: i.filename):
                        digest.update(f"{info.filename}\t{info.file_size}\t{info.CRC}\n".encode())
        return digest.hexdigest()

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write ``n`` procedural land-cover RGB|NDVI pairs as SENT-format PNGs under ``root``.

        Splits get about 80/10/10% of the pairs. As in the real data, each 512x512 source tile
        is cut into four 256x256 sub-tiles named ``<tile><k>.png`` (k = 0..3) that stay in the
        same split; tiles are numbered from 10, train first. Files are 8-bit RGB 256x512: true
        colour left, NDVI encoded by :func:`landcover.encode_ndvi` in all three channels right.
        The same ``seed`` writes byte-identical files.
        """
        root = Path(root)
        tile = _FIRST_TILE
        for split, count in split_counts(n).items():
            folder = root / split
            folder.mkdir(parents=True, exist_ok=True)
            remaining = count
            while remaining > 0:
                # Seeding per tile keeps a tile's images independent of n and of the split sizes.
                scene = landcover.landscape(np.random.default_rng([seed, tile]), (512, 512))
                for k in range(min(_SUBTILES, remaining)):
                    row, col = divmod(k, 2)
                    window = (slice(256 * row, 256 * (row + 1)), slice(256 * col, 256 * (col + 1)))
                    subtile = {key: value[window] for key, value in scene.items()}
                    Image.fromarray(landcover.sent_pair(subtile)).save(folder / f"{tile}{k}.png")
                remaining -= min(_SUBTILES, remaining)
                tile += 1


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``sent`` dataset plugin."""
    return [Sent]
