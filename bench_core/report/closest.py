"""The cell page's closest pairs: the generated samples nearest to the training set, each beside its training item.

Read from the cell's ``eval.json``: a memorisation metric's per-sample details (``samples``:
sample name -> nearest training item's ``train_id``, ``distance`` and that item's own
nearest-neighbour distance ``train_nn_distance``; see :attr:`bench_core.api.MetricValue.item_details`).
The images are the ones evaluation saved: ``sample/<sample>.png`` and, for the training items
nearest to the closest samples, ``train_nearest/<id>.png``. Metrics computed in the same
feature space find the same pairs; they are shown once, under all their names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CLOSEST_PAIRS = 8
"""Pairs shown per group: the samples with the smallest distance to their nearest training item."""
TRAIN_FOLDER = "train_nearest"


def closest_pairs(evaluation: Mapping[str, Any], cell_dir: Path, n: int = CLOSEST_PAIRS) -> list[dict[str, Any]]:
    """Groups ``{"metrics": [...], "pairs": [...]}`` of the ``n`` samples closest to a training item, closest first.

    Each pair: ``sample`` (its name), ``sample_src`` and ``train_src`` (image paths relative to
    the cell folder, ``None`` when the file is absent), ``train_id``, ``distance``,
    ``train_nn_distance`` and ``closer`` (the sample is at most as far from the training item
    as that item's nearest other training item). Entries that are not shaped so are skipped.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for metric, entry in (evaluation.get("sample") or {}).items():
        samples = entry.get("samples") if isinstance(entry, dict) else None
        details = [(name, d) for name, d in (samples or {}).items() if _valid(d)] if isinstance(samples, dict) else []
        ranked = sorted(details, key=lambda nd: (nd[1]["distance"], nd[0]))[:n]
        if not ranked:
            continue
        key = tuple((name, d["train_id"], d["distance"]) for name, d in ranked)
        if key not in groups:
            groups[key] = {"metrics": [], "pairs": [_pair(name, d, cell_dir) for name, d in ranked]}
        groups[key]["metrics"].append(metric)
    return list(groups.values())


def _valid(detail: Any) -> bool:
    if not isinstance(detail, dict) or not isinstance(detail.get("train_id"), str):
        return False
    numbers = [detail.get("distance"), detail.get("train_nn_distance")]
    return all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in numbers)


def _pair(name: str, detail: Mapping[str, Any], cell_dir: Path) -> dict[str, Any]:
    sample_src = f"sample/{Path(name).name}.png"
    train_src = f"{TRAIN_FOLDER}/{Path(detail['train_id']).name}.png"
    return {
        "sample": name,
        "sample_src": sample_src if (cell_dir / sample_src).is_file() else None,
        "train_src": train_src if (cell_dir / train_src).is_file() else None,
        "train_id": detail["train_id"],
        "distance": detail["distance"],
        "train_nn_distance": detail["train_nn_distance"],
        "closer": detail["distance"] <= detail["train_nn_distance"],
    }
