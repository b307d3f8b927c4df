"""Images the evaluator writes: per-item PNGs named like the inputs, the task grids, and the strip items.

The comparison strip of the report shows the same test items for every model of a dataset.
Which items is decided from the item ids alone (:func:`strip_key`), so every cell scored on
the same test items keeps the same ones, whatever the model, the seed or the order the items
arrive in; a :class:`StripKeeper` holds only those few while the test split streams past.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def view2d(x: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) image for display: 3D volumes show their three orthogonal centre slices."""
    if x.dim() == 4:
        c, d, h, w = x.shape
        size = max(d, h, w)
        planes = [x[:, d // 2], x[:, :, h // 2], x[:, :, :, w // 2]]
        padded = [torch.nn.functional.pad(p, (0, size - p.shape[-1], 0, size - p.shape[-2])) for p in planes]
        x = torch.cat(padded, dim=-1)
    if x.shape[0] not in (1, 3):
        x = x[:1]
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    arr = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def save_images(folder: Path, ids: list[str], images01: torch.Tensor, prefix: str = "", start: int = 0) -> None:
    """One PNG per item: named after its id, or ``<prefix><number>`` (from ``start``) with a prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, item_id in enumerate(ids):
        name = f"{prefix}{start + i:05d}" if prefix else Path(item_id).name
        Image.fromarray(to_uint8(view2d(images01[i]))).save(folder / f"{name}.png")


def save_grid(path: Path, columns: list[list[torch.Tensor]]) -> None:
    """Items as columns, rows as (source,) ground truth, prediction, error; 2 px gaps."""
    rows = max(len(c) for c in columns)
    channels = max(t.shape[0] for c in columns for t in c)
    h = max(t.shape[-2] for c in columns for t in c)
    w = max(t.shape[-1] for c in columns for t in c)
    gap = 2
    canvas = torch.ones(channels, rows * (h + gap) - gap, len(columns) * (w + gap) - gap)
    for j, column in enumerate(columns):
        for i, tile in enumerate(column):
            tile = tile.expand(channels, -1, -1)
            y, x = i * (h + gap), j * (w + gap)
            canvas[:, y : y + tile.shape[-2], x : x + tile.shape[-1]] = tile
    Image.fromarray(to_uint8(canvas)).save(path)


STRIP_ITEMS = 6
"""Test items per task whose input, target and output every cell keeps for the comparison strip."""

STRIP_INDEX = "items.json"
"""The file of a task's strip folder that lists its kept item ids (in strip order)."""


def strip_key(item_id: str) -> bytes:
    """The sort key that picks strip items: a hash of the id, so the choice is spread over the split."""
    return hashlib.blake2b(item_id.encode(), digest_size=8).digest()


class StripKeeper:
    """The ``size`` items with the lowest :func:`strip_key` seen so far, with their display tiles."""

    def __init__(self, size: int = STRIP_ITEMS) -> None:
        self.size = size
        self.kept: list[tuple[bytes, str, dict[str, torch.Tensor]]] = []

    def offer(self, item_id: str, tiles: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Keep ``item_id`` if it is among the lowest keys; ``tiles`` (role -> (C, H, W) image) is called only then."""
        key = strip_key(item_id)
        if len(self.kept) == self.size and (key, item_id) >= self.kept[-1][:2]:
            return
        self.kept.append((key, item_id, {role: t.detach().cpu() for role, t in tiles().items()}))
        self.kept.sort(key=lambda entry: entry[:2])
        del self.kept[self.size :]

    def save(self, folder: Path) -> None:
        """One PNG per item and role under ``folder/<role>/``, and the ids in strip order in ``folder/items.json``."""
        for _, item_id, tiles in self.kept:
            for role, tile in tiles.items():
                (folder / role).mkdir(parents=True, exist_ok=True)
                Image.fromarray(to_uint8(tile)).save(folder / role / f"{Path(item_id).name}.png")
        (folder / STRIP_INDEX).write_text(json.dumps([item_id for _, item_id, _ in self.kept]))
