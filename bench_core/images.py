"""Images the evaluator writes: per-item PNGs named like the inputs, and the task grids of the report."""

from __future__ import annotations

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
