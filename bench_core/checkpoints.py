"""Checkpoints: content-keyed final weights (safetensors) and resumable training state.

Final weights live at ``<output>/checkpoints/<key>/model.safetensors`` with a
``meta.json`` (and ``best.safetensors``, the best-validation weights, when the suite
validates); the key hashes everything that determines the weights (model name and
version, config, dataset fingerprint, seed, budget). Training state for resuming
(optimiser, step, RNG states) is written with ``torch.save`` and read back with
``weights_only=True``, so loading never executes code. Every write goes to a temporary
file first and is renamed into place (:mod:`bench_core.fileio`), so a kill never leaves a
half-written checkpoint. A file damaged anyway (a full disk, a copy cut short) fails with
a message that starts with what to delete; the loader's own error follows as the cause.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench_core.api import BenchError
from bench_core.fileio import remove_stale_temporaries, replace_atomically, write_atomic

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"  # the weights of the best validation score, when a suite validates
META = "meta.json"
TRAIN_STATE = "train_state.pt"
_MESSAGE_LIMIT = 300  # the runner records a failed cell's first 300 characters


class CheckpointError(BenchError):
    """A checkpoint is corrupt or does not match the model it is loaded into."""


def checkpoint_key(parts: dict[str, Any]) -> str:
    """A stable hash of the JSON-serialised ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def save_weights(model: torch.nn.Module, directory: Path, meta: dict[str, Any] | None, name: str = WEIGHTS) -> None:
    """Save the model's state (parameters and buffers) as safetensors ``name``, plus a JSON meta file if given."""
    # clone(): tied weights share storage, which safetensors refuses; each key gets its own copy.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    replace_atomically(directory / name, lambda tmp: save_file(state, str(tmp)))
    if meta is not None:
        write_atomic(directory / META, json.dumps(meta, indent=2, sort_keys=True, default=str))
    remove_stale_temporaries(directory)  # what writers killed mid-save left here (training states, weights)


def load_weights(model: torch.nn.Module, path: Path, load_format: str = "auto") -> str:
    """Load weights from a ``.safetensors`` file or a weights-only torch file into ``model``.

    ``load_format`` (a suite's ``load_format``): ``"ours"`` reads our formats (safetensors,
    or a state dict with the model's keys); ``"source"`` reads a checkpoint as the model's
    original code saves it, converted by the model class's ``from_source``
    (:mod:`bench_core.convert`); ``"auto"`` tells them apart by the file's keys. Torch files
    are only ever read with ``weights_only=True``. Returns the format used.

    Raises :class:`CheckpointError` naming the file and the mismatching keys or shapes, or,
    for a damaged file, what to delete.
    """
    from bench_core.convert import check_complete, load_into, refusal

    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        if load_format == "source":
            raise CheckpointError(f"checkpoint {path}: a .safetensors file is our format, not a source checkpoint")
        try:
            state = load_file(str(path))
        except Exception as exc:  # damage shows as errors of many types (SafetensorError, OSError)
            raise CheckpointError(_with_cause(f"checkpoint {path} {_weights_remedy(path)}", exc)) from None
        check_complete(model, state, f"checkpoint {path}")
        model.load_state_dict(state)
        return "ours"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damage shows as errors of many types (zip, pickle, OSError)
        message = refusal(path, exc)  # or a pickle that needs code to load: refused, never run
        raise CheckpointError(message or _with_cause(f"checkpoint {path} {_weights_remedy(path)}", exc)) from None
    return load_into(model, path, obj, load_format)


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically save resumable training state (tensors, numbers, strings, lists, dicts)."""
    # No fsync: saved every few steps, and a state lost to a power cut only costs those steps.
    replace_atomically(path, lambda tmp: torch.save(state, tmp), durable=False)


def load_train_state(path: Path) -> dict[str, Any] | None:
    """Load resumable training state, or ``None`` when there is none."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        remedy = "is damaged; delete it to restart this training stage of the cell from step 0"
        raise CheckpointError(_with_cause(f"training state {path} {remedy}", exc)) from None


def _weights_remedy(path: Path) -> str:
    """What to do about a damaged weights file: in the checkpoint store, deleting it retrains the cell."""
    if path.parent.parent.name == "checkpoints":  # <output>/checkpoints/<key>/<file>
        if path.name == WEIGHTS:
            return "is damaged; delete it to retrain this cell"
        if path.name == BEST_WEIGHTS:
            return f"is damaged; delete its folder {path.parent.name} to retrain this cell"
    return "is corrupt or not a weights file; replace it with a good copy"


def _with_cause(message: str, exc: BaseException) -> str:
    """``message (cause: ...)`` within the runner's limit, the cause clipped to fit."""
    cause = _cause(exc)
    room = _MESSAGE_LIMIT - len(message) - len(" (cause: )")
    if room < 20:  # a very long path: the remedy matters more than the cause
        return message
    return f"{message} (cause: {cause if len(cause) <= room else cause[: room - 3] + '...'})"


def _cause(exc: BaseException) -> str:
    """The loader's error in one line, without torch's advice to load the file unsafely.

    torch's messages run to paragraphs; for a refused pickle the first line is that advice
    (``weights_only=False``), which must never reach a user of a possibly hostile file.
    """
    text = str(exc).strip()
    refused = text.partition("WeightsUnpickler error:")[2].strip()
    # The first sentence: torch appends explanations ("This is an internal miniz error. ...").
    first = (refused or text).splitlines()[0].split(". ")[0] if refused or text else ""
    if not first or "weights_only" in first:
        first = type(exc).__name__
    return f"not plain tensors and numbers ({first})" if refused else first
