"""Reading the image files users hand the engine: PNG (8/16-bit grayscale, 8-bit RGB) and NIfTI (2D/3D).

One reader for ``bench score`` and for dataset plugins (the built-in ``folder``, ``hipmri``,
``oasis`` and ``flair`` loaders use it), so a file is read the same way everywhere and a bad
file raises :class:`~bench_core.api.DataError` naming it. Pillow reads colour PNGs with 8 bits
per channel only: a 16-bit colour (or grayscale-with-alpha) PNG is refused rather than read with
its low byte dropped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage
from PIL import Image, UnidentifiedImageError

from bench_core.api import DataError

PNG_SUFFIX = ".png"
NIFTI_SUFFIXES = (".nii.gz", ".nii")

NIFTI_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)
"""What nibabel raises on a file it cannot parse: bad gzip streams (OSError, zlib.error), truncated
data (EOFError, or OSError "Expected N bytes"), malformed headers (the nibabel errors)."""

# Pillow modes read as they are: (channels, bits per sample). Pillow < 10 opens 16-bit grey as "I".
_PNG_MODES = {"L": (1, 8), "RGB": (3, 8), "I;16": (1, 16), "I;16B": (1, 16), "I;16L": (1, 16)}
_REFUSED_MODES = {
    "1": "1-bit black-and-white PNG; save it as 8-bit grayscale",
    "P": "palette (indexed-colour) PNG; save it as grayscale or RGB so its values are intensities",
    "LA": "grayscale PNG with an alpha channel; save it without alpha (8- or 16-bit grayscale)",
    "RGBA": "RGBA PNG (alpha channel); save it as RGB or grayscale without alpha",
}
# With convert=True (bench score), these are converted instead: alpha dropped, a palette's colours read.
_CONVERTED = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "RGBA": "RGB", "RGBa": "RGB"}


@dataclass(frozen=True)
class Kind:
    """What one image file is: ``"png"`` (with its bit depth) or ``"nifti"``, channels and spatial dims."""

    format: str
    channels: int
    dims: int
    bits: int | None = None

    def describe(self) -> str:
        """E.g. ``"8-bit grayscale PNG"``, ``"16-bit grayscale PNG"``, ``"8-bit RGB PNG"``, ``"3D NIfTI"``."""
        if self.format == "nifti":
            return f"{self.dims}D NIfTI"
        return f"{self.bits}-bit {'RGB' if self.channels == 3 else 'grayscale'} PNG"


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def probe(path: Path) -> tuple[Kind, tuple[int, ...]]:
    """The kind and spatial shape of a PNG or NIfTI file, from its header only."""
    if not is_nifti(path):
        kind, shape, _ = _read_png(path, load=False, convert=False)
        return kind, shape
    shape = _spatial(path, tuple(open_nifti(path).shape))
    return Kind("nifti", 1, len(shape)), shape


def read_image(path: Path, *, convert: bool = False, dtype: type = np.float32) -> tuple[Kind, np.ndarray]:
    """The kind and the ``(C, *spatial)`` array of a PNG or NIfTI file, values as stored.

    NIfTI values are scaled by the header's slope and intercept, trailing singleton axes are
    dropped, and arrays keep nibabel's voxel axis order (no reorientation). PNGs of a mode that
    is not an intensity image (1-bit, palette, alpha) are refused with what to save instead, or
    with ``convert`` read as ``bench score`` documents: alpha dropped, a palette as its RGB colours.
    """
    if not is_nifti(path):
        kind, _, array = _read_png(path, load=True, convert=convert)
        return kind, array.astype(dtype)
    array = read_nifti(path, dtype)
    array = array.reshape(_spatial(path, array.shape))
    return Kind("nifti", 1, array.ndim), array[None]


def open_nifti(path: Path) -> SpatialImage:
    """Open a NIfTI file and parse its header (the data is read later, through the returned proxy).

    A file that is not a NIfTI image raises :class:`DataError` naming the file and the cause.
    """
    try:
        return nib.load(path)
    except NIFTI_READ_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc}); "
            "expected a NIfTI-1 or NIfTI-2 image (.nii, or gzip-compressed .nii.gz)"
        ) from exc


def read_nifti(path: Path, dtype: type = np.float32) -> np.ndarray:
    """The voxel array of a NIfTI file as ``dtype``, scaled by the header's slope and intercept.

    Any stored dtype and byte order is accepted (nibabel swaps big-endian data). Unreadable
    headers, truncated and corrupt data raise :class:`DataError` naming the file
    (:func:`open_nifti`, :func:`nifti_data_error`).
    """
    image = open_nifti(path)
    try:
        return image.get_fdata(dtype=dtype)
    except NIFTI_READ_ERRORS as exc:
        raise nifti_data_error(path, image, exc) from exc


def nifti_data_error(path: Path, image: SpatialImage, exc: BaseException) -> DataError:
    """The :class:`DataError` for a NIfTI file whose header parsed but whose voxel data could not be read.

    A data stream that ends early (an interrupted copy or download) is reported as truncated,
    with the array the header promises; anything else as corrupt data with nibabel's reason.
    """
    shape = "x".join(map(str, image.shape))
    dtype = image.get_data_dtype()
    size = dtype.itemsize * int(np.prod(image.shape))
    truncated = isinstance(exc, EOFError) or (isinstance(exc, OSError) and str(exc).startswith("Expected"))
    if truncated:
        return DataError(
            f"{path}: truncated NIfTI file: the header declares a {shape} {dtype.name} array "
            f"({size} bytes) but the data ends early; copy or export the file again"
        )
    return DataError(
        f"{path}: corrupt NIfTI data ({type(exc).__name__}: {exc}); the header declares a {shape} {dtype.name} "
        "array; copy or export the file again"
    )


def _rawmode(image: Image.Image) -> str:
    # The decoder's raw mode tells the stored bit depth, which Pillow's mode hides for 16-bit colour.
    args = image.tile[0][3] if image.tile else ""
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _png_mode(path: Path, image: Image.Image) -> str:
    """The PNG's Pillow mode, ``I;16`` for 16-bit grayscale; refuses what cannot be read at full depth."""
    if image.format != "PNG":
        raise DataError(f"{path}: not a PNG file (its content is {image.format}); expected PNG or NIfTI files")
    mode, rawmode = image.mode, _rawmode(image)
    if mode == "I" and rawmode.startswith("I;16"):
        return "I;16"
    if ";16" in rawmode and not mode.startswith("I"):
        what = "colour" if mode.startswith("RGB") else "grayscale-with-alpha"
        raise DataError(
            f"{path}: 16-bit {what} PNG; Pillow reads {what} PNGs with 8 bits per channel only, so it is refused "
            "rather than read with the low byte dropped; save it as 8-bit RGB, or as 16-bit grayscale per channel"
        )
    return mode


def _read_png(path: Path, *, load: bool, convert: bool) -> tuple[Kind, tuple[int, ...], np.ndarray | None]:
    try:
        with Image.open(path) as image:
            mode = _png_mode(path, image)
            if convert and mode in _CONVERTED:
                image, mode = image.convert(_CONVERTED[mode]), _CONVERTED[mode]
            if mode not in _PNG_MODES:
                reason = _REFUSED_MODES.get(mode, f"PNG of mode {mode}")
                raise DataError(f"{path}: {reason}; expected 8- or 16-bit grayscale or 8-bit RGB PNGs")
            channels, bits = _PNG_MODES[mode]
            shape = (image.height, image.width)
            array = np.asarray(image) if load else None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read PNG file ({type(exc).__name__}: {exc})") from exc
    if array is not None:
        array = array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    return Kind("png", channels, 2, bits), shape, array


def _spatial(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    # Trailing singleton axes (a 2D slice stored as H x W x 1, a volume as 4D with one frame) are dropped.
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise DataError(f"{path}: NIfTI of shape {tuple(shape)}; expected a 2D slice or a 3D volume")
    return tuple(int(s) for s in shape)
