"""``bench data check``: read every item of a dataset plugin's splits and report what is wrong, file by file.

:func:`check_dataset` constructs the plugin, reads each item of ``train``, ``val`` and ``test``
(catching every error per item so one bad file does not hide the next), and checks each item
against the plugin's own :class:`~bench_core.api.DataSpec`: modalities present, shape
``(channels, *shape)``, finite values inside ``value_range``, and for paired specs matching
spatial shapes of both modalities. The :class:`CheckReport` holds per-split statistics and the
list of bad items; ``.format()`` renders it for the terminal and ``.ok`` says whether the folder
is usable.

Like the rest of ``bench_core``'s command modules this imports torch only inside functions, so
``bench --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench_core.api import SPLITS, BenchError, DataError, DataSpec

# Values may exceed value_range by float rounding only.
_RANGE_TOLERANCE = 1e-5


@dataclass
class BadItem:
    """One item that could not be read or does not match the spec."""

    split: str
    index: int
    item: str  # file name where the split exposes ``files``, else the item id or ``#index``
    reason: str


@dataclass
class SplitReport:
    """What reading every item of one split found."""

    name: str
    count: int = 0
    shapes: dict[str, set[tuple[int, ...]]] = field(default_factory=dict)
    dtypes: set[str] = field(default_factory=set)
    minimum: float = math.inf
    maximum: float = -math.inf
    nan: int = 0
    inf: int = 0
    mismatched_pairs: int = 0
    paired: bool = False
    problems: list[str] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the split opened, holds items, and every item was read and matched the spec."""
        return self.count > 0 and not self.problems and not self.bad

    @property
    def pairing(self) -> str:
        """``"-"`` for unpaired data, else ``"ok"`` or the number of mismatched or incomplete pairs."""
        if not self.paired:
            return "-"
        return "ok" if self.mismatched_pairs == 0 else f"{self.mismatched_pairs} bad"


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`: plugin, spec, construction error and per-split reports."""

    plugin: str
    root: Path
    options: dict[str, Any]
    spec: DataSpec | None = None
    error: str | None = None
    splits: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the plugin loaded and every split is present, non-empty and free of bad items."""
        return self.error is None and set(self.splits) == set(SPLITS) and all(s.ok for s in self.splits.values())

    @property
    def bad_items(self) -> list[BadItem]:
        """Bad items of all splits, in split order."""
        return [item for split in self.splits.values() for item in split.bad]

    def format(self) -> str:
        """A human-readable report: a table per split, then every problem and bad item with its reason."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "no options"
        lines = [f"dataset {self.plugin} at {self.root} ({options})"]
        if self.error is not None:
            lines += [f"  cannot load: {self.error}", "FAILED"]
            return "\n".join(lines)
        spec = self.spec
        if spec is not None:
            channels = ", ".join(f"{m}:{c}" for m, c in zip(spec.modalities, spec.channels, strict=True))
            lines.append(
                f"  spec: {channels} channels, {spec.dims}D shape {spec.shape}, value range {_ranges(spec)}"
            )
        header = ("split", "items", "bad", "shapes", "dtype", "min", "max", "NaN", "Inf", "pairs")
        rows = [header] + [_row(self.splits[name]) for name in SPLITS if name in self.splits]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for name in SPLITS:
            for problem in self.splits[name].problems if name in self.splits else ():
                lines.append(f"  {name}: {problem}")
        for item in self.bad_items:
            lines.append(f"  {item.split}[{item.index}] {item.item}: {item.reason}")
        bad, problems = len(self.bad_items), sum(len(s.problems) for s in self.splits.values())
        lines.append("OK" if self.ok else f"FAILED: {bad} bad item(s), {problems} split problem(s)")
        return "\n".join(lines)


def _row(split: SplitReport) -> tuple[str, ...]:
    shapes = "; ".join(
        f"{m} " + " ".join("x".join(map(str, s)) for s in sorted(shapes)) for m, shapes in split.shapes.items()
    )
    finite = split.minimum <= split.maximum
    return (
        split.name,
        str(split.count),
        str(len(split.bad)),
        shapes or "-",
        ",".join(sorted(split.dtypes)) or "-",
        f"{split.minimum:.4g}" if finite else "-",
        f"{split.maximum:.4g}" if finite else "-",
        str(split.nan),
        str(split.inf),
        split.pairing,
    )


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` command-line options; values are YAML (``size=[64,64]``, ``layout=nifti``)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"option {pair!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def check_dataset(
    cls: type,
    root: Path,
    options: Mapping[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Construct dataset plugin ``cls`` on ``root`` with ``options`` and read every item of every split.

    A :class:`DataError` (or any other error) while constructing the plugin or its spec is
    reported as ``error``; nothing else can be checked then (plugins list their splits when
    constructed, so a missing split folder ends the check there). Otherwise each split is
    opened and every item read; errors are recorded per item with the file and the reason.
    ``progress(split, done, total)`` is called after each item when given.
    """
    report = CheckReport(plugin=getattr(cls, "name", cls.__name__), root=Path(root), options=dict(options))
    try:
        plugin = cls(Path(root), **options)
        report.spec = plugin.spec()
    except Exception as exc:  # any failure to load is what the user must see
        report.error = _describe(exc)
        return report
    for name in SPLITS:
        report.splits[name] = _check_split(plugin, name, report.spec, progress)
    return report


def _check_split(
    plugin: Any, name: str, spec: DataSpec, progress: Callable[[str, int, int], None] | None
) -> SplitReport:
    split = SplitReport(name=name, paired=spec.paired)
    try:
        data = plugin.split(name)
        total = len(data)
    except Exception as exc:  # reported, the other splits are still checked
        split.problems.append(f"cannot open split: {_describe(exc)}")
        return split
    split.count = total
    if total == 0:
        split.problems.append("split is empty")
    expected = spec.split_sizes.get(name)
    if expected is not None and expected != total:
        split.problems.append(f"holds {total} items but the spec's split_sizes says {expected}")
    files = getattr(data, "files", None)
    for index in range(total):
        label = str(files[index]) if files is not None and index < len(files) else f"#{index}"
        try:
            item = data[index]
        except Exception as exc:  # one bad file must not hide the next
            split.bad.append(BadItem(name, index, label, _describe(exc)))
        else:
            if files is None and isinstance(item, Mapping) and "id" in item:
                label = str(item["id"])
            reasons = _check_item(item, spec, split)
            if reasons:
                split.bad.append(BadItem(name, index, label, "; ".join(reasons)))
        if progress is not None:
            progress(name, index + 1, total)
    return split


def _check_item(item: Any, spec: DataSpec, split: SplitReport) -> list[str]:
    """Check one item against ``spec``, adding its statistics to ``split``; returns the reasons it is bad."""
    import torch

    if not isinstance(item, Mapping):
        return [f"item is a {type(item).__name__}, not a dict"]
    reasons = [] if "id" in item else ["no 'id' field"]
    spatial: dict[str, tuple[int, ...]] = {}
    for modality, channels in zip(spec.modalities, spec.channels, strict=True):
        low, high = spec.range_of(modality)
        tensor = item.get(modality)
        if not isinstance(tensor, torch.Tensor):
            reasons.append(f"{modality} missing" if tensor is None else f"{modality} is not a tensor")
            continue
        shape = tuple(tensor.shape)
        split.shapes.setdefault(modality, set()).add(shape)
        split.dtypes.add(str(tensor.dtype).removeprefix("torch."))
        spatial[modality] = shape[1:]
        expected = (channels, *spec.shape)
        if shape != expected:
            reasons.append(f"{modality} has shape {shape}, the spec says {expected}")
        values = tensor.detach().float()
        nan, inf = int(values.isnan().sum()), int(values.isinf().sum())
        split.nan, split.inf = split.nan + nan, split.inf + inf
        if nan or inf:
            reasons.append(f"{modality} has {nan} NaN and {inf} Inf values")
        finite = values[values.isfinite()]
        if finite.numel():
            v_min, v_max = float(finite.min()), float(finite.max())
            split.minimum, split.maximum = min(split.minimum, v_min), max(split.maximum, v_max)
            if v_min < low - _RANGE_TOLERANCE or v_max > high + _RANGE_TOLERANCE:
                reasons.append(f"{modality} values [{v_min:.4g}, {v_max:.4g}] leave the value range [{low}, {high}]")
    if spec.paired:
        a, b = spec.modalities
        if a not in spatial or b not in spatial:
            split.mismatched_pairs += 1
        elif spatial[a] != spatial[b]:
            split.mismatched_pairs += 1
            reasons.append(f"pair mismatch: {a} spatial shape {spatial[a]} != {b} spatial shape {spatial[b]}")
    return reasons


def _ranges(spec: DataSpec) -> str:
    """The value range, or each modality's where they differ."""
    if spec.value_range is not None:
        return str(spec.value_range)
    return ", ".join(f"{m} {spec.range_of(m)}" for m in spec.modalities)


def _describe(exc: BaseException) -> str:
    # A DataError already names the file and the problem; other errors need their type to be understood.
    return str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
