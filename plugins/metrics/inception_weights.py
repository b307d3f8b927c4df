"""Where the FID Inception weights come from: an offline lookup that never downloads.

Lookup, in order (the first that names a file decides):

1. the ``weights`` option of the metric (a path; a missing file is a :class:`BenchError`),
2. the environment variable ``BENCH_FID_WEIGHTS``,
3. ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (where pytorch-fid
   itself caches the file after a download).

When no file is found the source is *unavailable* and says why; the metrics then still accept
updates and report ``NaN`` with ``status = "unavailable"`` and the reason.

``weights="random:SEED"`` stands for the same network with seeded random weights. It exists for
tests only (the numbers mean nothing) and is labelled as such in the settings.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bench_core.api import BenchError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub names files by the first 8 hex digits of their sha256
WEIGHTS_ENV = "BENCH_FID_WEIGHTS"
_RANDOM = re.compile(r"random:(\d+)")


@dataclass(frozen=True)
class WeightsSource:
    """Where the extractor's weights come from, or why there are none.

    Attributes:
        kind: ``"file"``, ``"random"`` (tests only) or ``"unavailable"``.
        path: the weights file (``kind == "file"``).
        seed: the random-init seed (``kind == "random"``).
        sha256: full hex digest of the file (``kind == "file"``).
        reason: why the extractor is unavailable (``kind == "unavailable"``).
    """

    kind: str
    path: str | None = None
    seed: int | None = None
    sha256: str | None = None
    reason: str | None = None

    @property
    def available(self) -> bool:
        """True when features can be computed."""
        return self.kind != "unavailable"

    def provenance(self) -> dict[str, str]:
        """Settings entries naming the weights (part of every FID/KID value's settings)."""
        if self.kind == "random":
            return {
                "weights": f"random:{self.seed} (seeded random init, for tests only; values are meaningless)",
                "weights_sha256": "random",
            }
        if self.kind == "unavailable":
            return {"weights": "unavailable", "weights_sha256": "unavailable"}
        assert self.sha256 is not None
        official = self.sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)
        check = (
            f"sha256 starts with {FID_WEIGHTS_SHA256_PREFIX}: the pytorch-fid release file"
            if official
            else f"sha256 does not start with {FID_WEIGHTS_SHA256_PREFIX}: NOT the pytorch-fid release file, "
            "values are not comparable with published FIDs"
        )
        return {"weights": FID_WEIGHTS_FILE if official else "custom", "weights_sha256": self.sha256[:16],
                "weights_check": check}  # fmt: skip


def default_weights_path() -> Path:
    """Where torch hub (and hence pytorch-fid) caches the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def resolve_weights(weights: str | os.PathLike | None) -> WeightsSource:
    """Find the weights as the module docstring describes; never downloads.

    Raises :class:`BenchError` when ``weights`` names a file that does not exist (an explicit
    request that cannot be honoured); a fruitless search returns an unavailable source.
    """
    if weights is not None:
        match = _RANDOM.fullmatch(str(weights))
        if match:
            return WeightsSource("random", seed=int(match.group(1)))
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BenchError(f"FID Inception weights {str(path)!r} (option 'weights') do not exist")
        return WeightsSource("file", path=str(path), sha256=_sha256(path))
    searched = []
    env = os.environ.get(WEIGHTS_ENV)
    candidates = ([Path(env).expanduser()] if env else []) + [default_weights_path()]
    for path in candidates:
        searched.append(str(path))
        if path.is_file():
            return WeightsSource("file", path=str(path), sha256=_sha256(path))
    return WeightsSource(
        "unavailable",
        reason=(
            f"FID Inception weights not found; searched: {', '.join(searched)}; set {WEIGHTS_ENV} to the file "
            f"{FID_WEIGHTS_FILE} or put it there (nothing is downloaded)"
        ),
    )
