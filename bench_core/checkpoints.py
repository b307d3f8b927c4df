"""Checkpoints: content-keyed final weights (safetensors) and resumable training state.

Final weights live at ``<output>/checkpoints/<key>/model.safetensors`` with a
``meta.json`` (and ``best.safetensors``, the best-validation weights, when the suite
validates); the key hashes everything that determines the weights (model name and
version, config, dataset fingerprint, seed, budget). Training state for resuming
(optimiser, step, RNG states) is written with ``torch.save`` and read back with
``weights_only=True``, so loading never executes code. Every write goes to a temporary
file first and is renamed into place, so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bench_core.api import BenchError

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"  # the weights of the best validation score, when a suite validates
META = "meta.json"
TRAIN_STATE = "train_state.pt"


class CheckpointError(BenchError):
    """A checkpoint is corrupt or does not match the model it is loaded into."""


def checkpoint_key(parts: dict[str, Any]) -> str:
    """A stable hash of the JSON-serialised ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, directory: Path, meta: dict[str, Any] | None, name: str = WEIGHTS) -> None:
    """Save the model's state (parameters and buffers) as safetensors ``name``, plus a JSON meta file if given."""
    directory.mkdir(parents=True, exist_ok=True)
    # clone(): tied weights share storage, which safetensors refuses; each key gets its own copy.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, directory / name)
    if meta is not None:
        atomic_write_bytes(directory / META, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights from a ``.safetensors`` file or a weights-only torch file into ``model``.

    Raises :class:`CheckpointError` naming the file and the mismatching keys or shapes.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights file: {exc}") from None
    except Exception as exc:  # weights_only refusals come as pickle errors of several types
        raise CheckpointError(f"checkpoint {path} could not be loaded safely: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, expected a state dict")
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
            f"checkpoint {path} does not match the model: " + "; ".join(details)
            + " (was it trained with another config?)"
        )  # fmt: skip
    model.load_state_dict(state)


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically save resumable training state (tensors, numbers, strings, lists, dicts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(path: Path) -> dict[str, Any] | None:
    """Load resumable training state, or ``None`` when there is none."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"training state {path} is corrupt ({exc}); delete it to restart this cell from scratch"
        ) from None
