"""Helpers shared by the dataset plugins of this package: options, file listing, fingerprints, resizing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench_core.api import SPLITS, DataError

FINGERPRINT_SAMPLES = 16
"""Number of files whose leading bytes enter a fingerprint."""

FINGERPRINT_BYTES = 64 * 1024
"""Leading bytes hashed per sampled file."""



def check_options(plugin: str, options: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raise :class:`DataError` naming the first unknown option and listing the valid ones."""
    valid = sorted(valid)
    for key in options:
        if key not in valid:
            raise DataError(f"{plugin}: unknown option {key!r}; valid options: {', '.join(valid)}")


def parse_size(plugin: str, size: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """Validate a ``size`` option: ``None`` for ``default``, else two positive integers ``(H, W)``."""
    if size is None:
        return default
    values = tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise DataError(f"{plugin}: option size must be two positive integers [H, W], got {size!r}")
    return values


def list_split_files(root: Path, folder: str, patterns: Sequence[str], layout: str) -> list[Path]:
    """Files of one split folder matching any of ``patterns``, sorted by name.

    A missing or empty folder is a :class:`DataError` naming the folder and describing the
    expected ``layout``.
    """
    path = root / folder
    if not path.is_dir():
        raise DataError(f"split folder {path} does not exist; expected layout: {layout}")
    files = sorted({f for pattern in patterns for f in path.glob(pattern) if f.is_file()})
    if not files:
        raise DataError(f"split folder {path} holds no {' or '.join(patterns)} files; expected layout: {layout}")
    return files


def list_volumes(plugin: str, root: Path, layout: str) -> list[Path]:
    """The NIfTI volumes (``*.nii``, ``*.nii.gz``) of a flat folder, sorted; at least one per split."""
    files = sorted({f for pattern in ("*.nii", "*.nii.gz") for f in root.glob(pattern) if f.is_file()})
    if len(files) < len(SPLITS):
        raise DataError(
            f"{plugin}: {root} holds {len(files)} NIfTI volumes, need at least {len(SPLITS)} "
            f"(one per split); expected layout: {layout}"
        )
    return files


def files_of_split(plugin: str, files: Mapping[str, list[Path]], name: str) -> list[Path]:
    """The files of split ``name``, or a :class:`DataError` naming the valid splits."""
    if name not in files:
        raise DataError(f"{plugin}: unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    return files[name]


def check_root(plugin: str, root: Path, layout: str) -> Path:
    """Return ``root`` as a :class:`Path`, raising :class:`DataError` when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{plugin}: data root {root} does not exist; expected layout: {layout}")
    return root


def fingerprint_files(root: Path, files: Sequence[Path]) -> str:
    """Fast content fingerprint: sorted relative paths and sizes, plus the leading bytes of a sample.

    Hashes up to :data:`FINGERPRINT_SAMPLES` evenly spaced files (first and last included)
    for their first :data:`FINGERPRINT_BYTES`, so a fingerprint costs a listing and a few reads
    whatever the dataset size.
    """
    entries = sorted((f.relative_to(root).as_posix(), f) for f in files)
    digest = hashlib.sha256()
    for rel, path in entries:
        digest.update(f"{rel}\t{path.stat().st_size}\n".encode())
    if entries:
        picks = np.unique(np.linspace(0, len(entries) - 1, min(FINGERPRINT_SAMPLES, len(entries))).round())
        for index in picks.astype(int):
            rel, path = entries[index]
            with path.open("rb") as handle:
                digest.update(rel.encode() + b"\0" + handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(C, H, W)`` tensor to ``size``; no-op when it already has that size.

    Antialiased, as torchvision's ``Resize``, so that downsizing (e.g. to 64x32 for CPU
    quickstarts) does not alias; the filter has non-negative weights, so values stay within
    the input's range.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def split_counts(n: int) -> dict[str, int]:
    """Distribute ``n`` items about 80/10/10 over the splits, at least one per split."""
    if n < len(SPLITS):
        raise DataError(f"embedded data needs at least {len(SPLITS)} items (one per split), got n={n}")
    held_out = max(1, round(0.1 * n))
    return {"train": n - 2 * held_out, "val": held_out, "test": held_out}


def fingerprint_spread(root: Path, files: Sequence[Path], windows: int = 4) -> str:
    """Like :func:`fingerprint_files`, but each sampled file contributes ``windows`` evenly spaced chunks.

    Volumes often begin with megabytes of constant background (a skull-stripped 181x217x181
    float32 volume has no brain in its first 64 KiB), so a leading-bytes hash misses edits to
    the content. Here each sampled file contributes ``FINGERPRINT_BYTES // windows`` bytes at
    ``windows`` offsets from its start to its end, at the same read cost.
    """
    entries = sorted((f.relative_to(root).as_posix(), f) for f in files)
    digest = hashlib.sha256()
    for rel, path in entries:
        digest.update(f"{rel}\t{path.stat().st_size}\n".encode())
    if entries:
        chunk = FINGERPRINT_BYTES // windows
        picks = np.unique(np.linspace(0, len(entries) - 1, min(FINGERPRINT_SAMPLES, len(entries))).round())
        for index in picks.astype(int):
            rel, path = entries[index]
            size = path.stat().st_size
            digest.update(rel.encode() + b"\0")
            with path.open("rb") as handle:
                for offset in np.linspace(0, max(0, size - chunk), windows).astype(int):
                    handle.seek(int(offset))
                    digest.update(handle.read(chunk))
    return digest.hexdigest()
