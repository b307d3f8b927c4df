"""``bench score``: compare a folder of predictions with a folder of references.

Files are matched by name without extension (``a.png`` with ``a.png``, ``a.nii.gz`` with
``a.nii.gz``), read in sorted order and streamed through the metric plugins in batches, so
no folder is ever held in memory. Intensities are mapped to ``[0, 1]`` exactly as the
evaluation engine does, and every metric runs with ``data_range = 1``:

- PNG (8-bit or 16-bit gray, 8-bit RGB; RGBA and LA lose their alpha channel, a palette
  image is read as its RGB colours; 16-bit colour is refused, since Pillow would drop its low
  byte): divided by the dtype maximum (255 or 65535), or by ``data_range`` when one is given.
- NIfTI (``.nii``/``.nii.gz``, 2D or 3D, read with nibabel after its intensity scaling):
  intensities have no fixed range, so ``data_range`` is required and values are divided by it.

Values outside ``[0, data_range]`` and NaN/Inf are errors naming the file; nothing is clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench_core.api import BenchError, DataError
from bench_core.feeder import Computed, MetricFeeder, build_metric
from bench_core.imagefiles import NIFTI_SUFFIXES, PNG_SUFFIX, is_nifti, read_image

NIFTI_RANGE_MESSAGE = "NIfTI intensities have no fixed range; pass --data-range R"
_LIST_AT_MOST = 10


@dataclass(frozen=True)
class _Pair:
    """A prediction file and its reference, matched by ``name`` (file name without extension)."""

    name: str
    pred: Path
    ref: Path


@dataclass
class MetricScore:
    """One metric's result over all matched files."""

    name: str
    kind: str
    version: str
    higher_is_better: bool | None  # None: no ranking direction (e.g. data-copying's C_T)
    value: float
    std: float | None
    n: int
    settings: dict[str, Any]
    per_file: dict[str, float] | None = None


@dataclass
class ScoreResult:
    """Metric values of a prediction folder against a reference folder, with provenance."""

    pred_dir: Path
    ref_dir: Path
    n_files: int
    dims: int
    provenance: dict[str, Any]
    metrics: dict[str, MetricScore] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table: one row per metric (value, std, n, direction)."""
        header = ("metric", "value", "std", "n", "better")
        rows = [header]
        notes = []
        for m in self.metrics.values():
            value = f"{m.value:.4f}" if math.isfinite(m.value) else str(m.value)
            if m.settings.get("status") == "unavailable":
                value = "unavailable"
                notes.append(f"{m.name} unavailable: {m.settings.get('reason', 'no reason given')}")
            std = f"{m.std:.4f}" if m.std is not None and math.isfinite(m.std) else "-"
            rows.append((m.name, value, std, str(m.n), _direction(m.higher_is_better)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        mapping = "; ".join(self.provenance["mapping"])
        lines.append("")
        lines.append(f"{self.n_files} file pairs, {self.dims}D, {mapping}")
        lines.extend(notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite numbers become ``null``)."""
        metrics = {}
        for m in self.metrics.values():
            entry: dict[str, Any] = {
                "value": m.value, "std": m.std, "n": m.n, "kind": m.kind, "higher_is_better": m.higher_is_better,
                "settings": m.settings, "provenance": {"plugin": m.name, "version": m.version},
            }  # fmt: skip
            if m.per_file is not None:
                entry["per_file"] = m.per_file
            metrics[m.name] = entry
        out = {
            "pred_dir": str(self.pred_dir), "ref_dir": str(self.ref_dir), "n_files": self.n_files,
            "dims": self.dims, "provenance": self.provenance, "metrics": metrics,
        }  # fmt: skip
        return _jsonable(out)


@dataclass(frozen=True)
class ImageFolders:
    """The images ``bench score`` compares, and their intensity range.

    Attributes:
        pred_dir: folder of predictions (PNG and/or NIfTI files).
        ref_dir: folder of references with the same file names.
        data_range: intensity range ``R`` of the files; values are divided by ``R``. Required
            for NIfTI; for PNG it defaults to the dtype maximum (255 or 65535).
    """

    pred_dir: Path
    ref_dir: Path
    data_range: float | None = None


def score(folders: ImageFolders, metrics: list[str], registry: Any, batch_size: int = 16) -> ScoreResult:
    """Score the images of ``folders.pred_dir`` against the same-named images of ``folders.ref_dir``.

    Args:
        folders: the two folders and the files' intensity range.
        metrics: metric plugin names (``dist:name`` allowed), looked up in ``registry``.
        registry: a :class:`bench_core.plugins.Registry`.
        batch_size: files per batch fed to the metrics.

    Raises:
        BenchError: missing or empty folders, unmatched names, unreadable files, shape or
            dims mismatches, values out of range or not finite, unknown metrics.
    """
    data_range = folders.data_range
    if batch_size < 1:
        raise BenchError(f"batch_size must be at least 1, got {batch_size}")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise BenchError(f"data range must be a positive finite number, got {data_range}")
    names = list(dict.fromkeys(m.strip() for m in metrics if m.strip()))
    if not names:
        raise BenchError("no metric given; pass --metric NAME[,NAME...]")
    classes = {name: registry.get("metric", name).cls for name in names}
    pred_dir, ref_dir = Path(folders.pred_dir), Path(folders.ref_dir)
    pairs = _match(_list_images(pred_dir, "prediction"), _list_images(ref_dir, "reference"), pred_dir, ref_dir)
    if data_range is None and any(is_nifti(p.pred) or is_nifti(p.ref) for p in pairs):
        raise BenchError(NIFTI_RANGE_MESSAGE)
    stream = _Stream(classes, batch_size)
    for pair in pairs:
        stream.add(pair, data_range)
    stream.flush()
    assert stream.feeder is not None and stream.dims is not None  # _match refuses empty folders
    provenance = {
        "data_range": data_range if data_range is not None else "dtype maximum (PNG)",
        "mapping": sorted(stream.mappings),
        "metric_data_range": 1.0,
        "matching": "by file name without extension (.png, .nii, .nii.gz)",
        "order": "sorted by name",
        "batch_size": batch_size,
        "out_of_range": "error (values are never clamped)",
    }
    result = ScoreResult(pred_dir, ref_dir, len(pairs), stream.dims, provenance)
    for computed in stream.feeder.compute():
        result.metrics.update(_metric_scores(computed))
    return result


class _Stream:
    """Matched files read in order, batched (a batch holds images of one size) and fed to the metrics."""

    def __init__(self, classes: dict[str, type], batch_size: int) -> None:
        self.classes, self.batch_size = classes, batch_size
        self.feeder: MetricFeeder | None = None  # built at the first file, whose dims it takes
        self.dims: int | None = None
        self.first_dims_file = ""
        self.mappings: set[str] = set()
        self.batch: list[tuple[str, np.ndarray, np.ndarray]] = []

    def add(self, pair: _Pair, data_range: float | None) -> None:
        """Read one pair, check it, and feed the batch when it is full."""
        pred_arr, pred_map, pred_dims = _read01(pair.pred, data_range)
        ref_arr, ref_map, _ = _read01(pair.ref, data_range)
        self.mappings.update((pred_map, ref_map))
        if pred_arr.shape != ref_arr.shape:
            raise BenchError(
                f"{pair.name}: prediction {pair.pred.name} has shape {_shape(pred_arr)}, reference "
                f"{pair.ref.name} has {_shape(ref_arr)} (channels, *spatial)"
            )
        if self.dims is None:
            self.dims, self.first_dims_file = pred_dims, pair.name
            self.feeder = MetricFeeder(_instantiate(self.classes, pred_dims))
        elif pred_dims != self.dims:
            raise BenchError(
                f"mixed dims: {pair.name} is {pred_dims}D but {self.first_dims_file} is {self.dims}D; score 2D "
                "images and 3D volumes separately"
            )
        if self.batch and self.batch[0][1].shape != pred_arr.shape:
            self.flush()  # images of another size start a new batch: a batch must stack
        self.batch.append((pair.name, pred_arr, ref_arr))
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Feed the pending batch to the metrics."""
        import torch

        if not self.batch or self.feeder is None:
            return
        pred = torch.from_numpy(np.stack([b[1] for b in self.batch])).float()
        ref = torch.from_numpy(np.stack([b[2] for b in self.batch])).float()
        with torch.no_grad():
            self.feeder.update(pred, ref, [b[0] for b in self.batch])
        self.batch.clear()


def _metric_scores(computed: Computed) -> dict[str, MetricScore]:
    """A computed metric as scores: its headline (with the per-file values of a paired metric) and components."""
    cls, whole = computed.cls, computed.value
    scores = {}
    parts = [(computed.name, whole)] + [(f"{computed.name}.{k}", v) for k, v in whole.components.items()]
    for row_name, value in parts:
        settings = dict(value.settings)
        if cls.kind == "paired":
            settings.setdefault("std", "population (ddof 0) over files")
        scores[row_name] = MetricScore(
            name=row_name, kind=str(cls.kind), version=str(cls.version),
            higher_is_better=cls.higher_is_better, value=float(value.value),
            std=None if value.std is None else float(value.std), n=int(value.n), settings=settings,
            per_file=computed.per_item if cls.kind == "paired" and row_name == computed.name else None,
        )  # fmt: skip
    return scores


def _direction(higher_is_better: bool | None) -> str:
    """The table's ``better`` column: which way the metric ranks, or that it does not."""
    if higher_is_better is None:
        return "not ranked"
    return "higher" if higher_is_better else "lower"


def _instantiate(classes: dict[str, type], dims: int) -> dict[str, tuple[type, Any]]:
    out = {}
    for name, cls in classes.items():
        if dims not in cls.dims:
            raise BenchError(f"metric {name} supports dims {sorted(cls.dims)}; the files are {dims}D")
        out[name] = (cls, build_metric(cls, {}, dims))
    return out


def _stem(path: Path) -> str | None:
    """The name without its image extension, or ``None`` for files that are not images."""
    lower = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, PNG_SUFFIX):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _list_images(folder: Path, role: str) -> dict[str, Path]:
    """Image files of ``folder`` by name without extension."""
    if not folder.exists():
        raise DataError(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _stem(path)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        if stem in found:
            raise DataError(f"{role} folder {folder} holds both {found[stem].name} and {path.name}; rename one")
        found[stem] = path
    if not found:
        raise DataError(f"{role} folder {folder} holds no PNG or NIfTI (.nii, .nii.gz) files")
    return found


def _match(pred: dict[str, Path], ref: dict[str, Path], pred_dir: Path, ref_dir: Path) -> list[_Pair]:
    only_pred = sorted(set(pred) - set(ref))
    only_ref = sorted(set(ref) - set(pred))
    if only_pred or only_ref:
        parts = []
        for names, where, other in ((only_pred, pred_dir, ref_dir), (only_ref, ref_dir, pred_dir)):
            if names:
                shown = ", ".join(names[:_LIST_AT_MOST]) + (", ..." if len(names) > _LIST_AT_MOST else "")
                parts.append(f"{len(names)} in {where} without a match in {other}: {shown}")
        raise DataError("file names do not match (compared without extension); " + "; ".join(parts))
    return [_Pair(name, pred[name], ref[name]) for name in sorted(pred)]


def _shape(arr: np.ndarray) -> tuple[int, ...]:
    return tuple(int(s) for s in arr.shape)


def _read01(path: Path, data_range: float | None) -> tuple[np.ndarray, str, int]:
    """Read ``path`` as a float64 ``(C, *spatial)`` array in ``[0, 1]``.

    Returns the array, a description of the mapping applied and the spatial dims.
    """
    kind, raw = read_image(path, convert=True, dtype=np.float64)
    if kind.format == "nifti":
        assert data_range is not None  # checked by score() before reading
        label, scale = "NIfTI", float(data_range)
    else:
        label = f"{kind.bits}-bit PNG"
        scale = float(data_range) if data_range is not None else float(2**kind.bits - 1)
    if not np.isfinite(raw).all():
        bad = int((~np.isfinite(raw)).sum())
        raise DataError(f"{path}: {bad} values are NaN or Inf")
    lo, hi = float(raw.min()), float(raw.max())
    if lo < 0 or hi > scale:
        raise DataError(
            f"{path}: values span [{lo:g}, {hi:g}], outside the data range [0, {scale:g}]; "
            "pass the right --data-range (values are never clamped)"
        )
    return raw / scale, f"{label}: value / {scale:g}", kind.dims


def _jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and paths, tuples, sets and numpy scalars made plain."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)
