"""The ``folder`` dataset plugin: the user's own PNG or NIfTI images in split folders, configured in YAML alone.

A suite benchmarks the built-in models on a folder of the user's images without writing a
plugin: ``{plugin: folder, root: DIR, options: {...}}``. See :class:`Folder` for the layout,
the options and how values are mapped.
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench_core.api import API_VERSION, SPLITS, DataError, DataSpec
from bench_core.hookspecs import hookimpl
from bench_core.imagefiles import Kind, probe, read_image

from ._common import (
    check_options,
    check_root,
    files_of_split,
    fingerprint_files,
    fingerprint_spread,
    list_split_files,
    resize,
)

LAYOUT = (
    "ROOT/{train,val,test}/NAME.png|.nii|.nii.gz for one modality, or ROOT/{train,val,test}/MODALITY/NAME.* "
    "with one subfolder per modality (files of one item share NAME); val/ is optional"
)
PATTERNS = ("*.png", "*.nii", "*.nii.gz")
OUTPUT_RANGE = (-1.0, 1.0)
"""Every modality's declared range is mapped linearly onto this range (unless ``keep_ranges``)."""
DEFAULT_MODALITY = "image"
DEFAULT_VAL_FRACTION = 0.1
FITS = ("resize", "crop")
_OPTIONS = ("modalities", "size", "fit", "val_fraction", "seed", "keep_ranges")
_MODALITY_KEYS = ("range", "clip")
_SHOWN = 5  # file names listed in one error message


@dataclass(frozen=True)
class Modality:
    """One modality's settings: its folder name, file kind, declared value range and clipping."""

    name: str
    kind: Kind
    range: tuple[float, float]
    clip: bool
    first: Path  # the file the kind and shape were taken from, named in mismatch errors
    keep_range: bool = False  # yield values in the declared range instead of mapping it onto [-1, 1]

    @property
    def output_range(self) -> tuple[float, float]:
        """The range of the yielded values: the declared one when kept, else [-1, 1]."""
        return self.range if self.keep_range else OUTPUT_RANGE


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def fit_shape(image: torch.Tensor, size: tuple[int, ...], fit: str, path: Path) -> torch.Tensor:
    """``(C, *spatial)`` resized (antialiased bilinear, separably in 3D) or centre-cropped to ``size``.

    Resizing never leaves the input's value range (the filter's weights are non-negative). An
    image smaller than ``size`` on some axis cannot be cropped and raises :class:`DataError`.
    """
    spatial = tuple(image.shape[1:])
    if fit == "crop":
        if any(s < t for s, t in zip(spatial, size, strict=True)):
            raise DataError(
                f"{path}: shape {_x(spatial)} is smaller than the crop size {_x(size)}; "
                "use fit: resize, or a smaller size"
            )
        starts = [(s - t) // 2 for s, t in zip(spatial, size, strict=True)]
        return image[(slice(None), *(slice(a, a + t) for a, t in zip(starts, size, strict=True)))]
    if len(size) == 2:
        return resize(image, size)
    # 3D: (H, W) of every depth slice, then (D, W') with W' already final; separable, so this is
    # the antialiased trilinear resize torch does not offer.
    c, d, h, w = image.shape
    image = resize(image.reshape(c * d, h, w), size[1:]).reshape(c, d, *size[1:])
    flat = image.permute(0, 2, 1, 3).reshape(c * size[1], d, size[2])
    return resize(flat, (size[0], size[2])).reshape(c, size[1], size[0], size[2]).permute(0, 2, 1, 3).contiguous()


def _x(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def load_modality(
    path: Path, modality: Modality, shape: tuple[int, ...], size: tuple[int, ...] | None, fit: str
) -> torch.Tensor:
    """One file of ``modality`` as float32 ``(C, *spatial)``: its declared range mapped linearly onto [-1, 1],
    or kept as it is (``keep_range``).

    The file must be of the modality's kind and, without ``size``, of ``shape``; values must be
    finite and inside the declared range (or are clipped to it when the modality says ``clip``).
    Every violation raises :class:`DataError` naming the file.
    """
    kind, array = read_image(path)
    name = modality.name
    if kind != modality.kind:
        raise DataError(
            f"{path}: {kind.describe()}, but the {name} files are {modality.kind.describe()} "
            f"(like {modality.first}); every file of a modality must be of one kind"
        )
    if size is None and tuple(array.shape[1:]) != shape:
        raise DataError(
            f"{path}: shape {_x(array.shape[1:])}, but the dataset's items are {_x(shape)} (like {modality.first}); "
            "set the option size to resize (or, with fit: crop, centre-crop) every item to one shape"
        )
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    low, high = modality.range
    found = (float(array.min()), float(array.max()))
    if found[0] < low or found[1] > high:
        if not modality.clip:
            raise DataError(
                f"{path}: values span [{found[0]:g}, {found[1]:g}], outside the declared range [{low:g}, {high:g}] "
                f"of {name}; widen modalities.{name}.range, or set modalities.{name}.clip: true to clip to it"
            )
        np.clip(array, low, high, out=array)
    image = torch.from_numpy(array)
    if not modality.keep_range:
        image = image.sub_(low).mul_(2.0 / (high - low)).sub_(1.0)
    if size is not None:
        image = fit_shape(image, size, fit, path)
    # Clamping only absorbs float rounding, so the range is exactly the one the spec declares.
    return image.clamp_(*modality.output_range)


Item = tuple[str, tuple[Path, ...]]
"""An item: its name (the shared file name without extension) and one file per modality."""


class FolderSplit(Dataset):
    """One split of :class:`Folder`: reads each item's files lazily in ``__getitem__``.

    Holds only paths and settings, so it pickles cheaply into DataLoader workers.
    """

    def __init__(
        self,
        items: Sequence[Item],
        modalities: Sequence[Modality],
        shape: tuple[int, ...],
        size: tuple[int, ...] | None,
        fit: str,
    ) -> None:
        self.items = tuple(items)
        self.modalities = tuple(modalities)
        self.shape = shape
        self.size = size
        self.fit = fit

    @property
    def files(self) -> tuple[Path, ...]:
        """Each item's file of the first modality (``bench data check`` labels items by it)."""
        return tuple(paths[0] for _, paths in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, paths = self.items[index]
        item: dict[str, Any] = {
            m.name: load_modality(path, m, self.shape, self.size, self.fit)
            for m, path in zip(self.modalities, paths, strict=True)
        }
        item["id"] = name
        return item


class Folder:
    """The user's own images: one modality, or a pair matched by file name, as PNG or NIfTI files.

    Layout (``val/`` optional)::

        ROOT/train/NAME.png           one modality: files directly in the split folders,
        ROOT/test/NAME.png            yielded under the key "image" (or the one name in modalities)

        ROOT/train/ct/NAME.nii.gz     a pair: one subfolder per modality; an item is the files
        ROOT/train/mr/NAME.png        named NAME (without extension) in every modality folder
        ROOT/test/ct/..., ROOT/test/mr/...

    Files are ``.png`` (8- or 16-bit grayscale, or 8-bit RGB; no alpha, no palette, no 1-bit;
    2- and 4-bit grayscale are read scaled to 8 bits, as Pillow does) or ``.nii``
    / ``.nii.gz`` (2D slices or 3D volumes, trailing singleton axes dropped, voxel axes as
    stored). Every file of a modality must be of one kind (format, bit depth, channels) and,
    without ``size``, every item of one shape. An item whose name is missing in the other
    modality's folder is an error naming both folders. Items are read lazily, each split in
    sorted name order; the item id is the name.

    Values: each modality declares its value range (``modalities: {NAME: {range: [LOW, HIGH]}}``);
    for PNG it defaults to the bit depth's full range ([0, 255] or [0, 65535]); NIfTI has no
    such default, so its range is required. By default each modality's range is mapped
    linearly onto [-1, 1] (LOW -> -1, HIGH -> 1), the range every built-in dataset yields and
    the built-in models train on. With ``keep_ranges: true`` the values are yielded as they are
    (CT in Hounsfield units beside MR in [0, 1]) and the spec declares each modality's own
    range (``DataSpec.ranges``), for models that work in the data's units. Either way the
    engine maps each modality's range onto [0, 1] before the metrics, so the scores are the
    same. A value outside the declared range is an error naming the file, unless the modality
    sets ``clip: true`` (then the range is a window, as for CT).

    Options:
        modalities: the modalities to read, in order (the first is the source ``A`` of
            translation tasks, and the one that is sampled): a mapping of name to settings
            ``{range: [LOW, HIGH], clip: false}`` (either may be left out), or a list of names.
            Names are the subfolders of the split folders; by default every subfolder of
            ``train/`` (sorted; at most two), or ``image`` when the split folders hold files.
        size: ``[H, W]`` or ``[D, H, W]`` of the yielded items (default: the files' own shape,
            which must then be the same for every file).
        fit: how ``size`` is reached: ``"resize"`` (antialiased bilinear; per axis in 3D, aspect
            not kept) or ``"crop"`` (centre crop; files smaller than ``size`` are errors).
        val_fraction: share of the training items taken, by a permutation seeded with
            ``seed``, as the val split when ``ROOT/val`` does not exist (default 0.1, at least
            one item). Giving it while ``ROOT/val`` exists is an error.
        seed: seed of that permutation (default 0).
        keep_ranges: yield each modality in its declared range instead of [-1, 1] (default false).

    ``bench data make folder DIR`` (and ``root: embedded``) writes an example of the paired
    layout from the ``gold`` plugin's phantom pairs (:meth:`make_embedded`).
    """

    name = "folder"
    version = "1.0"
    api_version = API_VERSION
    obtain = (
        "your own images: ROOT/train and ROOT/test (ROOT/val optional) holding PNG or NIfTI files, "
        "or one subfolder per modality with files matched by name; `bench data make folder DIR` writes an example"
    )

    def __init__(
        self,
        root: Path,
        modalities: Mapping[str, Any] | Sequence[str] | None = None,
        size: Sequence[int] | None = None,
        fit: str = "resize",
        val_fraction: float | None = None,
        seed: int = 0,
        keep_ranges: bool = False,
        **options: Any,
    ) -> None:
        check_options(self.name, options, _OPTIONS)
        if not isinstance(keep_ranges, bool):
            raise DataError(f"{self.name}: option keep_ranges must be true or false, got {keep_ranges!r}")
        self.keep_ranges = keep_ranges
        settings = _parse_modalities(modalities)
        if fit not in FITS:
            raise DataError(f"{self.name}: unknown fit {fit!r}; valid values: {', '.join(FITS)}")
        self.fit = fit
        self.root = check_root(self.name, root, LAYOUT)
        names, nested = self._modality_names(settings)
        self._items = {"train": self._list("train", names, nested), "test": self._list("test", names, nested)}
        # The first training files (by name) give each modality's kind and the items' shape.
        first = self._items["train"][0][1]
        if (self.root / "val").is_dir():
            if val_fraction is not None:
                raise DataError(
                    f"{self.name}: {self.root / 'val'} exists and val_fraction={val_fraction!r} is given; "
                    "remove the option to use the folder, or the folder to split val from train"
                )
            self._items["val"] = self._list("val", names, nested)
        else:
            fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
            self._items["train"], self._items["val"] = self._take_val(self._items["train"], fraction, seed)
        self._items = {split: self._items[split] for split in SPLITS}
        probes = [probe(path) for path in first]
        self.modalities = tuple(
            self._modality(name, settings.get(name, {}), path, kind)
            for name, path, (kind, _) in zip(names, first, probes, strict=True)
        )
        self.shape = probes[0][1]
        # Without size every item must have the first item's shape; with it, only the dims must agree.
        shapes = {s for _, s in probes}
        if {len(s) for s in shapes} != {len(self.shape)} or (size is None and shapes != {self.shape}):
            found = ", ".join(f"{p} is {_x(s)}" for p, (_, s) in zip(first, probes, strict=True))
            raise DataError(
                f"{self.name}: the modalities of an item differ in shape ({found}); set the option size to resize "
                "or crop them to one shape (2D and 3D modalities cannot be paired)"
            )
        self.size = _parse_size(self.name, size, len(self.shape))

    def _modality_names(self, settings: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, ...], bool]:
        """The modality names and whether the split folders hold one subfolder per modality."""
        train = self.root / "train"
        # Hidden folders (.ipynb_checkpoints, .DS_Store's kin) are no modalities.
        found = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        subfolders = [name for name in found if not name.startswith(".")]
        if not subfolders:
            if len(settings) > 1:
                raise DataError(
                    f"{self.name}: option modalities names {', '.join(settings)} but {train} holds no subfolders "
                    f"(one per modality); expected layout: {LAYOUT}"
                )
            return (tuple(settings) or (DEFAULT_MODALITY,)), False
        if settings:
            return tuple(settings), True
        if len(subfolders) > 2:
            raise DataError(
                f"{self.name}: {train} holds {len(subfolders)} subfolders ({', '.join(subfolders)}); a dataset has "
                "one or two modalities: name them with the option modalities"
            )
        return tuple(subfolders), True

    def _list(self, split: str, names: Sequence[str], nested: bool) -> list[Item]:
        """The items of one split folder, sorted by name; unpaired or ambiguous names are errors."""
        if not nested:
            files = _by_name(list_split_files(self.root, split, PATTERNS, LAYOUT))
            return [(name, (path,)) for name, path in sorted(files.items())]
        stray = [f.name for pattern in PATTERNS for f in sorted((self.root / split).glob(pattern)) if f.is_file()]
        if stray:
            raise DataError(
                f"{self.root / split} holds image files ({', '.join(stray[:_SHOWN])}) beside the modality subfolders "
                f"{', '.join(names)}; put each file in its modality's subfolder"
            )
        listed = {m: _by_name(list_split_files(self.root, f"{split}/{m}", PATTERNS, LAYOUT)) for m in names}
        if len(names) == 2:
            _check_pairs(self.root / split, listed)
        return [(name, tuple(listed[m][name] for m in names)) for name in sorted(listed[names[0]])]

    def _take_val(self, train: list[Item], fraction: Any, seed: Any) -> tuple[list[Item], list[Item]]:
        """Split ``train`` into (train, val): ``round(fraction * n)`` items (at least 1) by a seeded permutation."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise DataError(f"{self.name}: option val_fraction must be a number between 0 and 1, got {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"{self.name}: option seed must be a non-negative integer, got {seed!r}")
        if len(train) < 2:
            raise DataError(
                f"{self.name}: {self.root / 'train'} holds {len(train)} item(s), too few to take a val split from; "
                "add items, or a val/ folder"
            )
        count = min(len(train) - 1, max(1, round(fraction * len(train))))
        chosen = set(np.random.default_rng(seed).permutation(len(train))[:count].tolist())
        return [t for i, t in enumerate(train) if i not in chosen], [t for i, t in enumerate(train) if i in chosen]

    def _modality(self, name: str, settings: Mapping[str, Any], first: Path, kind: Kind) -> Modality:
        declared = settings.get("range")
        if declared is None:
            if kind.format != "png":
                raise DataError(
                    f"{self.name}: the {name} files are NIfTI (like {first}), which declare no value range; give it "
                    f"as options: {{modalities: {{{name}: {{range: [LOW, HIGH]}}}}}} (LOW maps to -1, HIGH to 1)"
                )
            declared = (0.0, float(2**kind.bits - 1))
        declared = (float(declared[0]), float(declared[1]))
        return Modality(name, kind, declared, bool(settings.get("clip", False)), first, self.keep_ranges)

    def spec(self) -> DataSpec:
        """Each modality's channels and value range ([-1, 1], or its own when kept), the shape, the split sizes."""
        parts = ", ".join(
            f"{m.name}: {m.kind.describe()} [{m.range[0]:g}, {m.range[1]:g}]{'' if m.keep_range else ' -> [-1, 1]'}"
            for m in self.modalities
        )
        shape = self.size or self.shape
        fitted = f" ({'resized' if self.fit == 'resize' else 'centre-cropped'})" if self.size else ""
        return DataSpec(
            modalities=tuple(m.name for m in self.modalities),
            channels=tuple(m.kind.channels for m in self.modalities),
            dims=len(shape),
            shape=shape,
            ranges=tuple(m.output_range for m in self.modalities),
            split_sizes={split: len(items) for split, items in self._items.items()},
            description=f"folder {self.root.name}: {parts}, {_x(shape)}{fitted}",
        )

    def split(self, name: str) -> FolderSplit:
        """The map-style dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        items = files_of_split(self.name, self._items, name)
        return FolderSplit(items, self.modalities, self.shape, self.size, self.fit)

    def fingerprint(self) -> str:
        """Hash of every file's relative path and size and of sampled bytes (spread through 3D volumes)."""
        files = [path for items in self._items.values() for _, paths in items for path in paths]
        # A volume's leading bytes are mostly background; 2D files are small.
        volumes = any(m.kind.dims == 3 for m in self.modalities)
        return fingerprint_spread(self.root, files) if volumes else fingerprint_files(self.root, files)

    @classmethod
    def make_embedded(cls, root: Path, n: int = 64, seed: int = 0) -> None:
        """Write an example of the paired layout: the ``gold`` plugin's ``n`` phantom CT/MR pairs, split apart.

        ``root/{train,test}/{ct,mr}/NAME.png``, 8-bit grayscale 256x256; ``gold``'s val pairs go to
        ``train/``, so val is taken from train by ``val_fraction``, as for a folder without ``val/``.
        """
        from .gold import Gold

        with tempfile.TemporaryDirectory() as tmp:
            Gold.make_embedded(Path(tmp), n, seed)
            for path in sorted(Path(tmp).glob("*/*.png")):
                split = "test" if path.parent.name == "test" else "train"
                pair = np.asarray(Image.open(path))
                for modality, half in (("ct", pair[:, : pair.shape[0]]), ("mr", pair[:, pair.shape[0] :])):
                    (Path(root) / split / modality).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(half).save(Path(root) / split / modality / path.name)


def _by_name(files: Sequence[Path]) -> dict[str, Path]:
    """Files by name without extension; two files of one name (``a.png``, ``a.nii.gz``) are an error."""
    out: dict[str, Path] = {}
    for path in files:
        other = out.setdefault(_stem(path), path)
        if other != path:
            raise DataError(f"{path.parent}: {other.name} and {path.name} are one item twice; rename or remove one")
    return out


def _check_pairs(folder: Path, listed: Mapping[str, Mapping[str, Path]]) -> None:
    """Raise :class:`DataError` naming the files of each modality that have no partner in the other."""
    (a, files_a), (b, files_b) = listed.items()
    problems = []
    for mine, files, other, theirs in ((a, files_a, b, files_b), (b, files_b, a, files_a)):
        lonely = sorted(set(files) - set(theirs))
        if lonely:
            shown = ", ".join(files[n].name for n in lonely[:_SHOWN]) + (", ..." if len(lonely) > _SHOWN else "")
            problems.append(
                f"{len(lonely)} in {folder / mine} without a file of the same name in {folder / other}: {shown}"
            )
    if problems:
        raise DataError("unpaired files (items are matched by file name without extension): " + "; ".join(problems))


def _parse_modalities(value: Any) -> dict[str, dict[str, Any]]:
    """The ``modalities`` option as ``{name: {range, clip}}``, checked; ``{}`` when not given."""
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        value = dict.fromkeys(value)
    if not isinstance(value, Mapping) or not 1 <= len(value) <= 2:
        raise DataError(
            "folder: option modalities must name one or two modalities, as {NAME: {range: [LOW, HIGH]}, ...} "
            f"or [NAME, ...], got {value!r}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, settings in value.items():
        if not isinstance(name, str) or name in ("", ".", "..", "id") or "/" in name or "\\" in name:
            raise DataError(f"folder: modality name {name!r} must be a folder name other than 'id'")
        settings = {} if settings is None else settings
        if not isinstance(settings, Mapping):
            raise DataError(f"folder: option modalities.{name} must be a mapping like {{range: [LOW, HIGH]}}")
        for key in settings:
            if key not in _MODALITY_KEYS:
                near = difflib.get_close_matches(str(key), _MODALITY_KEYS, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise DataError(
                    f"folder: unknown key modalities.{name}.{key}{hint}; valid keys: {', '.join(_MODALITY_KEYS)}"
                )
        declared = settings.get("range")
        if declared is not None and not _is_range(declared):
            raise DataError(
                f"folder: option modalities.{name}.range must be [LOW, HIGH], finite numbers with LOW < HIGH, "
                f"got {declared!r}"
            )
        if not isinstance(settings.get("clip", False), bool):
            raise DataError(f"folder: option modalities.{name}.clip must be true or false, got {settings['clip']!r}")
        out[name] = dict(settings)
    return out


def _is_range(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in value):
        return False
    return value[0] < value[1]


def _parse_size(plugin: str, size: Any, dims: int) -> tuple[int, ...] | None:
    """The ``size`` option: ``None``, or ``dims`` positive integers."""
    if size is None:
        return None
    values = tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(values) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        axes = "[H, W]" if dims == 2 else "[D, H, W]"
        raise DataError(f"{plugin}: option size must be {dims} positive integers {axes} for {dims}D data, got {size!r}")
    return values


@hookimpl
def bench_datasets() -> list[type]:
    """Register the ``folder`` dataset plugin."""
    return [Folder]
