"""Source checkpoints: weights saved by a model's original research code, read into our modules.

A user who trained with a source's own code can benchmark those weights. The file is read
with ``torch.load(weights_only=True)`` and nothing else: a file that needs more (pickled
classes, functions, ``pathlib`` objects ...) is refused with the reason, never unpickled.
Conversion is model-specific, so the model plugin class provides it as two optional
classmethods (``bench_core.api.ModelPlugin``):

- ``from_source(sources, config) -> dict[str, Tensor]``: our state dict from the loaded
  files; the plugin raises ``BenchError`` for any source key it cannot place or any of ours
  it cannot fill;
- ``source_spec(sources, config) -> DataSpec``: a spec the source model fits, so that
  :func:`convert_files` can build the model without a dataset.

The engine then checks the result against the module itself (every parameter and buffer
set, every shape right) before loading or writing it. Two entry points:

- :func:`load_into`, behind :func:`bench_core.checkpoints.load_weights` (a suite's
  ``load:``): the format is detected from the file's keys (``load_format: auto``: a file
  sharing no key with our state dict is read as a source checkpoint), or insisted on;
- :func:`convert_files`, behind ``bench convert MODEL SOURCE_FILE... OUT.safetensors``:
  converts once and writes our safetensors format.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench_core.api import BenchError

FORMATS = ("auto", "ours", "source")


def refusal(path: Path, exc: BaseException) -> str | None:
    """The message refusing ``path`` when ``exc`` is torch's weights-only unpickler turning it down, else ``None``."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "weights only" not in text.lower().replace("_", " "):
        return None
    found = re.search(r"GLOBAL (\S+)", text)
    what = f"it pickles {found.group(1)}" if found else "its pickle holds more than plain data"
    return (
        f"{path} could not be loaded safely, so it is refused: {what}, which torch.load(weights_only=True) does not "
        "allow; medgen-bench never unpickles objects (that can run code). Re-save it holding only dicts, lists, "
        "numbers, strings and tensors"
    )


def read_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what is wrong.

    A file whose pickle needs more than plain containers, numbers, strings and tensors is
    refused (its objects would run code while loading); a damaged file says so.
    """
    from bench_core.checkpoints import CheckpointError

    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, EOF, OSError, pickle: a damaged, refused or non-torch file
        message = refusal(path, exc)
        if message:
            raise CheckpointError(message) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from None


def can_convert(cls: type) -> bool:
    """Whether the model class reads its source's checkpoints (has ``from_source``)."""
    return callable(getattr(cls, "from_source", None))


def from_source(cls: type, sources: Sequence[Any], config: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    """``cls.from_source(sources, config)``, checked to be a dict of tensors; errors name ``where``."""
    if not can_convert(cls):
        raise BenchError(f"{where}: model {cls.name!r} cannot read source checkpoints (it has no from_source)")
    try:
        state = cls.from_source(list(sources), dict(config))
    except BenchError as exc:
        raise BenchError(f"{where}: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"{where}: {cls.name}.from_source returned {type(state).__name__}, not a dict of tensors")
    return dict(state)


def check_complete(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise naming the keys unless ``state`` sets exactly every parameter and buffer of ``model`` at its shape."""
    from bench_core.checkpoints import CheckpointError

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(expected[k].shape)})"
            )
        raise CheckpointError(
            f"{where} does not match the model: " + "; ".join(details) + " (was it trained with another config?)"
        )


def _as_ours(obj: Any) -> Mapping[str, Any] | None:
    """The state dict inside one of our files (a state dict, or ``{"model": state dict}``), else ``None``."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    return obj if isinstance(obj, Mapping) else None


def load_into(model: torch.nn.Module, path: Path, obj: Any, load_format: str = "auto") -> str:
    """Load the torch-file contents ``obj`` (read from ``path``) into ``model``; returns the format used.

    ``auto``: our format when the file shares any key with the model's state dict, else the
    model's source format when its class has ``from_source``. ``ours`` / ``source`` insist.
    """
    if load_format not in FORMATS:
        raise BenchError(f"unknown checkpoint format {load_format!r}; expected one of {', '.join(FORMATS)}")
    cls = type(model)
    ours = _as_ours(obj)
    is_ours = ours is not None and bool(set(ours) & set(model.state_dict()))
    if load_format == "ours" or (load_format == "auto" and (is_ours or not can_convert(cls))):
        if ours is None:
            raise BenchError(f"checkpoint {path} holds {type(obj).__name__}, expected a state dict")
        check_complete(model, ours, f"checkpoint {path}")
        model.load_state_dict(dict(ours))
        return "ours"
    how = "" if load_format == "source" else " (no key in common with our format)"
    state = from_source(cls, [obj], getattr(model, "config", {}), f"checkpoint {path}{how}")
    check_complete(model, state, f"checkpoint {path} converted from the {cls.name} source format")
    model.load_state_dict(state)
    return "source"


def convert_files(cls: type, config: Mapping[str, Any], files: Sequence[Path], out: Path) -> dict[str, Any]:
    """Convert source checkpoint ``files`` of model class ``cls`` to our safetensors file ``out``.

    The model is built on the meta device from ``cls.source_spec`` to check that the
    converted state sets every parameter and buffer at its shape. Returns a summary (tensor
    and parameter counts, the spec) that is also stored in the file's metadata.
    """
    from safetensors.torch import save_file

    from bench_core.fileio import replace_atomically

    where = ", ".join(str(f) for f in files)
    sources = [read_torch_file(Path(f)) for f in files]
    if not callable(getattr(cls, "source_spec", None)):
        raise BenchError(f"model {cls.name!r} cannot read source checkpoints (it has no source_spec)")
    try:
        spec = cls.source_spec(sources, dict(config))
    except BenchError as exc:
        raise BenchError(f"{where}: {exc}") from None
    state = from_source(cls, sources, config, where)
    with torch.device("meta"):
        model = cls(dict(config), spec)
    check_complete(model, state, where)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    summary = {
        "model": cls.name,
        "version": str(cls.version),
        "tensors": len(tensors),
        "parameters": sum(p.numel() for p in model.parameters()),
        "channels": list(spec.channels),
        "sources": [Path(f).name for f in files],
    }
    metadata = {"format": "medgen-bench", **{k: json.dumps(v) for k, v in summary.items()}}
    metadata["config"] = json.dumps(dict(config), sort_keys=True, default=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return summary
