"""Shared Inception feature extractor of the distribution metrics: pytorch-fid's network, offline weights only.

The metrics reach it through :class:`.features.InceptionSpace` (their option ``features="inception"``).

The network is pytorch-fid's FID InceptionV3 (the TF 2015-12-05 graph ported to PyTorch, with
its patched pooling blocks), assembled here from ``pytorch_fid.inception``'s building blocks in
the same way as ``pytorch_fid.inception.InceptionV3``, but with the state dict loaded from a
local file: pytorch-fid's ``fid_inception_v3()`` downloads its weights, which this module never
does. Preprocessing is pytorch-fid's ``resize_input=True, normalize_input=True``: bilinear
resize to 299x299 (``align_corners=False``), then ``2x - 1``. Gray images are repeated to three
channels. Features of blocks that are not 1x1 (``feature_dims`` < 2048) are average-pooled, as
``pytorch_fid.fid_score.get_activations`` does.

Weights lookup, in order (the first that names a file decides; nothing is ever downloaded):

1. the ``weights`` option of the metric (a path; missing file is a :class:`BenchError`),
2. the environment variable ``BENCH_FID_WEIGHTS``,
3. ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (where pytorch-fid
   itself caches the file after a download).

When no file is found (or it cannot be loaded), the extractor is *unavailable*: the metrics
still accept updates and report ``NaN`` with ``status = "unavailable"`` and the reason.

``weights="random:SEED"`` builds the same network with seeded random weights. It exists for
tests only (the numbers mean nothing) and is labelled as such in the settings.

Feature cache, two layers, both keyed by content, never by a name (dataset label, file name):

- *in memory*: a BLAKE2 digest of each network input (the ``[0, 1]`` float32 3-channel image
  before resizing) and the extractor identity, so FID and KID configured together, or several
  models evaluated against the same test images in one process, run the network once per
  distinct image;
- *on disk*, for the real (target) images only: the features of an unchanged test set are
  computed once across runs and processes. A SQLite file (WAL mode, busy timeout, so
  concurrent processes can share it) under ``bench_core.api.cache_dir() / "inception-features"``
  (``$BENCH_CACHE_DIR``) holds one float32 row per (extractor, image digest); the extractor key
  is the weights identity (full SHA-256 of the file, or ``random:SEED``), the block
  (``feature_dims``) and :data:`PREPROCESSING`. Each row carries a checksum of its key and bytes.
  Generated images are not written (they change with every model and would only grow the file).
  A file that cannot be opened, read or written, or rows failing their checksum, give a
  ``warnings.warn`` naming the file and the features are computed instead; the file may be
  deleted at any time. Turned off by the metrics' option ``feature_cache=False`` or by
  ``BENCH_FEATURE_CACHE=0``. Nothing about the cache enters the settings: it never changes
  which features are used, only whether they are recomputed.

A cached feature was computed in whatever batch (and on whatever device) first saw the image;
kernels can differ in the last float32 bits between batch compositions and devices (more with
TF32 convolutions on CUDA), which moves FID far below its sampling noise.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import sqlite3
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_core.api import BenchError, cache_dir

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub names files by the first 8 hex digits of their sha256
WEIGHTS_ENV = "BENCH_FID_WEIGHTS"
RESIZE = 299

# pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM: feature dimensionality -> output block.
BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}
BLOCK_NAMES = {64: "first max pool", 192: "second max pool", 768: "pre-aux classifier", 2048: "pool3"}

# Images per network call: bounds activation memory at 299x299 (~40 MB per image in float32).
_CHUNK = 32
# Feature cache budget in bytes (float32 features: 8 KiB per image at 2048 dims, so ~32k images).
_CACHE_BYTES = 256 * 1024 * 1024
_RANDOM = re.compile(r"random:(\d+)")

PREPROCESSING = "v1: [0,1] float32, gray replicated to 3 channels, resize 299x299 bilinear align_corners=False, 2x-1"
"""Part of every on-disk cache key: change it whenever the network input or the network
construction changes (including the ``random:SEED`` init), so old rows are never reused."""
FEATURE_CACHE_ENV = "BENCH_FEATURE_CACHE"
DISK_CACHE_FILE = "features-v1.sqlite"
_BUSY_TIMEOUT_S = 60.0  # concurrent writers wait this long for the lock before giving up (warning, no crash)
_SQL_CHUNK = 900  # digests per SELECT: below SQLite's oldest bound-parameter limit (999)

# Planes of a (D, H, W) volume, named by the axis the centre slice cuts (see to_inception_batches).
PLANES = ("axial", "coronal", "sagittal")
PLANE_SLICES = {
    "axial": "centre slice along D, x[:, :, D // 2] (an (H, W) image)",
    "coronal": "centre slice along H, x[:, :, :, H // 2] (a (D, W) image)",
    "sagittal": "centre slice along W, x[:, :, :, :, W // 2] (a (D, H) image)",
}


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


def _fid_inception(source: WeightsSource) -> nn.Module:
    """torchvision's Inception3 patched exactly as ``pytorch_fid.inception.fid_inception_v3``, minus the download."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, _inception_v3

    # fork_rng: the random init below and torchvision's default init must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        if source.kind == "random":
            torch.manual_seed(int(source.seed or 0))
        inception = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
        inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
        inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
        inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
        inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        inception.Mixed_7b = FIDInceptionE_1(1280)
        inception.Mixed_7c = FIDInceptionE_2(2048)
        if source.kind == "random":
            # Kaiming-normal convolutions keep activations O(1) through ~90 ReLU layers (PyTorch's
            # default init shrinks them ~100-fold per block), so test features are well conditioned.
            for module in inception.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if source.kind == "file":
        state = torch.load(source.path, map_location="cpu", weights_only=True)
        inception.load_state_dict(state)
    return inception


class InceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[block], resize_input=True, normalize_input=True)``.

    ``forward`` takes ``(N, 3, H, W)`` images in ``[0, 1]`` and returns ``(N, feature_dims)``
    float32 features (spatially averaged for blocks below pool3, as pytorch-fid does).
    """

    def __init__(self, inception: nn.Module, feature_dims: int = 2048) -> None:
        super().__init__()
        last = BLOCK_INDEX_BY_DIM[feature_dims]
        # The block split of pytorch_fid.inception.InceptionV3.__init__.
        blocks = [
            [inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2)],
            [inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2)],
            [inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
             inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e],
            [inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))],
        ]  # fmt: skip
        self.blocks = nn.Sequential(*(nn.Sequential(*b) for b in blocks[: last + 1]))
        self.feature_dims = feature_dims
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``(N, 3, H, W)`` images in ``[0, 1]``."""
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        x = self.blocks(2 * x - 1)
        if x.shape[2] != 1 or x.shape[3] != 1:
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1)


def source_key(source: WeightsSource, feature_dims: int) -> str:
    """A string identifying the extractor (weights identity and block), used in cache keys."""
    ident = f"random:{source.seed}" if source.kind == "random" else f"sha256:{source.sha256}"
    return f"{ident}/dims{feature_dims}"


_INCEPTIONS: dict[str, nn.Module] = {}
_NETWORKS: dict[tuple[str, str], InceptionFeatures] = {}
_FEATURES: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
_FEATURE_BYTES = 0


def network(source: WeightsSource, feature_dims: int, device: torch.device) -> InceptionFeatures:
    """The extractor for ``source`` on ``device``, built once per process."""
    key = (source_key(source, feature_dims), str(device))
    if key not in _NETWORKS:
        ident = source_key(source, 2048)
        if ident not in _INCEPTIONS:
            _INCEPTIONS[ident] = _fid_inception(source)
        net = InceptionFeatures(_INCEPTIONS[ident], feature_dims)
        # Module.to() moves in place; the CPU network shares its layers with the cached Inception.
        _NETWORKS[key] = net if device.type == "cpu" else copy.deepcopy(net).to(device)
    return _NETWORKS[key]


def load_error(source: WeightsSource, feature_dims: int) -> str | None:
    """Build the CPU network now; return why it failed (a reason for "unavailable"), or None."""
    try:
        network(source, feature_dims, torch.device("cpu"))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:  # corrupt file
        return f"FID Inception weights {source.path} could not be loaded: {type(err).__name__}: {err}"
    return None


def _digest(image: torch.Tensor) -> bytes:
    data = image.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.blake2b(str(data.shape).encode(), digest_size=16)
    digest.update(data.tobytes())
    return digest.digest()


@dataclass
class CacheCounters:
    """Where the features of :func:`features` came from since the last :func:`clear_cache`.

    ``memory`` counts images (positions), ``disk`` and ``computed`` distinct images.
    """

    memory: int = 0
    disk: int = 0
    computed: int = 0


COUNTERS = CacheCounters()


def disk_cache_enabled() -> bool:
    """False when ``$BENCH_FEATURE_CACHE`` turns the on-disk cache off (``0``, ``false``, ``no``, ``off``)."""
    return os.environ.get(FEATURE_CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def disk_cache_path() -> Path:
    """The SQLite file of the on-disk feature cache (follows ``$BENCH_CACHE_DIR`` at each call)."""
    return cache_dir() / "inception-features" / DISK_CACHE_FILE


def _checksum(extractor: str, digest: bytes, data: bytes) -> bytes:
    check = hashlib.blake2b(extractor.encode(), digest_size=8)
    check.update(digest)
    check.update(data)
    return check.digest()


class FeatureDiskCache:
    """One SQLite file of float32 feature rows keyed by (extractor, image digest).

    A failure to open or read (unreadable or corrupt file) warns once with the path and turns
    this cache off for the rest of the process; a failure to write (read-only folder, full
    disk, lock held beyond the busy timeout) warns once and stops the writes only. Callers then
    compute the features, so a broken cache costs time, never a crash or a wrong value.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed = False
        self.writes_failed = False
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self._warned_checksum = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection inherited through fork must not be used (or closed) by the child; it is dropped.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; ignored where unsupported
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (extractor TEXT NOT NULL, digest BLOB NOT NULL, "
                "data BLOB NOT NULL, checksum BLOB NOT NULL, PRIMARY KEY (extractor, digest)) WITHOUT ROWID"
            )
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _fail(self, err: Exception, writing: bool = False) -> None:
        if writing:
            self.writes_failed = True
            what = "cannot be written; features computed now are not kept"
        else:
            self.failed = True
            what = "cannot be read; computing features instead"
        warnings.warn(
            f"Inception feature cache {self.path} {what} ({type(err).__name__}: {err}). Delete the file to rebuild "
            f"it, or set {FEATURE_CACHE_ENV}=0 to turn the cache off",
            RuntimeWarning,
            stacklevel=3,
        )

    def get(self, extractor: str, digests: list[bytes], feature_dims: int) -> dict[bytes, np.ndarray]:
        """The stored, checksum-verified rows among ``digests`` (one query per 900 digests)."""
        if self.failed or not digests:
            return {}
        found: dict[bytes, np.ndarray] = {}
        bad = 0
        try:
            with self._lock:
                conn = self._connect()
                for start in range(0, len(digests), _SQL_CHUNK):
                    chunk = digests[start : start + _SQL_CHUNK]
                    rows = conn.execute(
                        "SELECT digest, data, checksum FROM features WHERE extractor = ? AND digest IN "
                        f"({', '.join('?' * len(chunk))})",
                        [extractor, *chunk],
                    ).fetchall()
                    for digest, data, checksum in rows:
                        digest, data = bytes(digest), bytes(data)
                        if len(data) != 4 * feature_dims or _checksum(extractor, digest, data) != bytes(checksum):
                            bad += 1
                            continue
                        found[digest] = np.frombuffer(data, dtype="<f4").astype(np.float32)
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            return {}
        if bad and not self._warned_checksum:
            self._warned_checksum = True
            warnings.warn(
                f"Inception feature cache {self.path}: {bad} stored feature rows fail their checksum; they are "
                "recomputed and overwritten",
                RuntimeWarning,
                stacklevel=3,
            )
        return found

    def put(self, extractor: str, rows: list[tuple[bytes, np.ndarray]]) -> None:
        """Store ``(digest, feature)`` rows in one transaction (replacing rows that failed their checksum)."""
        if self.failed or self.writes_failed or not rows:
            return
        records = []
        for digest, row in rows:
            data = np.ascontiguousarray(row, dtype="<f4").tobytes()
            records.append((extractor, digest, data, _checksum(extractor, digest, data)))
        try:
            with self._lock:
                conn = self._connect()
                with conn:  # one transaction: commit, or roll back on error
                    conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", records)
        except (sqlite3.Error, OSError) as err:
            self._fail(err, writing=True)

    def close(self) -> None:
        """Close this process's connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


_DISK_CACHES: dict[Path, FeatureDiskCache] = {}


def disk_cache() -> FeatureDiskCache:
    """The on-disk cache at :func:`disk_cache_path`, one object per path and process."""
    path = disk_cache_path()
    if path not in _DISK_CACHES:
        _DISK_CACHES[path] = FeatureDiskCache(path)
    return _DISK_CACHES[path]


@torch.no_grad()
def features(images: torch.Tensor, source: WeightsSource, feature_dims: int, disk: bool = False) -> np.ndarray:
    """Features ``(N, feature_dims)`` float32 of ``(N, 3, H, W)`` images in ``[0, 1]``, via the caches.

    ``disk=True`` also looks the images up in, and writes computed features to, the on-disk
    cache (unless ``$BENCH_FEATURE_CACHE`` turns it off); the in-memory cache is always used.
    """
    global _FEATURE_BYTES
    prefix = source_key(source, feature_dims)
    keys = [(prefix, _digest(img)) for img in images]
    first: dict[tuple[str, bytes], int] = {}  # uncached key -> its first position (duplicates run once)
    for i, k in enumerate(keys):
        if k not in _FEATURES:
            first.setdefault(k, i)
    COUNTERS.memory += sum(1 for k in keys if k not in first)
    new: dict[tuple[str, bytes], np.ndarray] = {}
    store = disk_cache() if disk and first and disk_cache_enabled() else None
    extractor = f"{prefix}|{PREPROCESSING}"
    if store is not None:
        stored = store.get(extractor, [k[1] for k in first], feature_dims)
        new.update(((prefix, d), row) for d, row in stored.items())
        COUNTERS.disk += len(stored)
    todo = [k for k in first if k not in new]
    if todo:
        net = network(source, feature_dims, images.device)
        index = torch.tensor([first[k] for k in todo], device=images.device)
        batch = images.index_select(0, index).float()
        out = torch.cat([net(batch[i : i + _CHUNK]) for i in range(0, len(batch), _CHUNK)]).cpu().numpy()
        new.update(zip(todo, out, strict=True))
        COUNTERS.computed += len(todo)
        if store is not None:
            store.put(extractor, [(k[1], new[k]) for k in todo])
    for k, row in new.items():
        _FEATURES[k] = row
        _FEATURE_BYTES += row.nbytes
    result = np.stack([_FEATURES[k] for k in keys])
    for k in keys:
        _FEATURES.move_to_end(k)
    while _FEATURE_BYTES > _CACHE_BYTES and _FEATURES:
        _, row = _FEATURES.popitem(last=False)
        _FEATURE_BYTES -= row.nbytes
    return result


def clear_cache() -> None:
    """Forget in-memory features, reset :data:`COUNTERS` and close on-disk cache connections (files stay)."""
    global _FEATURE_BYTES
    _FEATURES.clear()
    _FEATURE_BYTES = 0
    COUNTERS.memory = COUNTERS.disk = COUNTERS.computed = 0
    for store in _DISK_CACHES.values():
        store.close()
    _DISK_CACHES.clear()


def plane_slices(x: torch.Tensor, dims: int) -> list[torch.Tensor]:
    """``(N, C, *spatial)`` items -> 2D batches ``(N, C, H, W)``: the items in 2D, three centre-slice planes in 3D.

    3D: one batch per plane of :data:`PLANES`, the centre slices of every volume: axial
    ``x[:, :, D // 2]``, coronal ``x[:, :, :, H // 2]``, sagittal ``x[:, :, :, :, W // 2]``. The
    names assume the dataset's (D, H, W) orientation: D the inferior-superior (slice) axis, H
    anterior-posterior, W left-right, as in a stack of axial slices. Volumes in NIfTI voxel
    order (X, Y, Z), e.g. RAS, have D = left-right: there the ``axial`` plane is anatomically
    sagittal and ``sagittal`` axial.
    """
    if dims == 2:
        return [x]
    d, h, w = x.shape[2:]
    return [x[:, :, d // 2], x[:, :, :, h // 2], x[:, :, :, :, w // 2]]


def to_inception_batches(x: torch.Tensor, dims: int, data_range: float) -> list[torch.Tensor]:
    """``(N, C, *spatial)`` items in ``[0, data_range]`` -> 3-channel 2D batches in ``[0, 1]``.

    The planes of :func:`plane_slices`; channels must be 1 (repeated to 3) or 3.
    """
    channels = x.shape[1]
    if channels not in (1, 3):
        raise BenchError(f"Inception features need 1 or 3 channels, got {channels}")
    x = x / data_range
    if channels == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    return plane_slices(x, dims)
