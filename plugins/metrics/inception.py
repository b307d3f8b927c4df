"""Shared Inception feature extractor for FID and KID: pytorch-fid's network, offline weights only.

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

Features are cached in memory by image content (a BLAKE2 digest of each preprocessed image)
and extractor identity, so FID and KID configured together, or several models evaluated
against the same test images in one process, run the network once per distinct image. A
cached feature was computed in whatever batch first saw the image; CPU/GPU kernels can differ
in the last float32 bit between batch compositions, which moves FID far below its sampling
noise.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_core.api import BenchError, MetricValue

from ._reduce import OUT_OF_RANGE_POLICIES, RANGE_TOLERANCE, check_options, check_range

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


@torch.no_grad()
def features(images: torch.Tensor, source: WeightsSource, feature_dims: int) -> np.ndarray:
    """Features ``(N, feature_dims)`` float32 of ``(N, 3, H, W)`` images in ``[0, 1]``, via the cache."""
    global _FEATURE_BYTES
    prefix = source_key(source, feature_dims)
    keys = [(prefix, _digest(img)) for img in images]
    first: dict[tuple[str, bytes], int] = {}  # uncached key -> its first position (duplicates run once)
    for i, k in enumerate(keys):
        if k not in _FEATURES:
            first.setdefault(k, i)
    todo = list(first)
    if todo:
        net = network(source, feature_dims, images.device)
        index = torch.tensor(list(first.values()), device=images.device)
        batch = images.index_select(0, index).float()
        out = torch.cat([net(batch[i : i + _CHUNK]) for i in range(0, len(batch), _CHUNK)]).cpu().numpy()
        for k, row in zip(todo, out, strict=True):
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
    """Forget cached features (tests use this to time or count network calls)."""
    global _FEATURE_BYTES
    _FEATURES.clear()
    _FEATURE_BYTES = 0


def to_inception_batches(x: torch.Tensor, dims: int, data_range: float) -> list[torch.Tensor]:
    """``(N, C, *spatial)`` items in ``[0, data_range]`` -> 3-channel 2D batches in ``[0, 1]``.

    2D: one batch. 3D: three batches, the orthogonal centre slices of every volume (planes
    D/2, H/2, W/2), so each volume contributes three feature vectors ("2.5D"). Channels must
    be 1 (repeated to 3) or 3.
    """
    channels = x.shape[1]
    if channels not in (1, 3):
        raise BenchError(f"Inception features need 1 or 3 channels, got {channels}")
    x = x / data_range
    if channels == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    if dims == 2:
        return [x]
    d, h, w = x.shape[2:]
    return [x[:, :, d // 2], x[:, :, :, h // 2], x[:, :, :, :, w // 2]]


class InceptionMetricBase(ABC):
    """Input handling shared by FID and KID: checks, weights lookup, feature extraction, counts.

    Subclasses set ``name`` and implement ``_add(real, fake)`` (feature arrays of one update).
    """

    name = "inception-metric"

    def __init__(
        self,
        data_range: float = 1.0,
        dims: int = 2,
        weights: str | None = None,
        feature_dims: int = 2048,
        out_of_range: str = "error",
    ) -> None:
        check_options(self.name, data_range, dims, frozenset({2, 3}))
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise BenchError(f"{self.name}: out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}")
        if feature_dims not in BLOCK_INDEX_BY_DIM:
            raise BenchError(
                f"{self.name}: feature_dims must be one of {sorted(BLOCK_INDEX_BY_DIM)}, got {feature_dims!r}"
            )
        self.data_range = float(data_range)
        # Not `self.dims`: that class attribute lists the supported dims for the registry.
        self.spatial_dims = dims
        self.feature_dims = feature_dims
        self.out_of_range = out_of_range
        self.source = resolve_weights(weights)
        if self.source.available:
            error = load_error(self.source, feature_dims)
            if error is not None:
                self.source = WeightsSource("unavailable", path=self.source.path, reason=error)
        self.n_real = 0
        self.n_fake = 0
        self._clamped = 0
        self._channels: set[int] = set()

    def _check(self, what: str, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise BenchError(f"{self.name}: {what} must be a float tensor")
        if x.dim() != self.spatial_dims + 2 or x.shape[0] == 0:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise BenchError(f"{self.name}: expected non-empty {layout} {what}, got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3):
            raise BenchError(f"{self.name}: {what} has {x.shape[1]} channels; Inception features need 1 or 3")
        x, clamped = check_range(self.name, what, x, self.data_range, self.out_of_range)
        self._clamped += clamped
        self._channels.add(int(x.shape[1]))
        return x

    def _features(self, x: torch.Tensor) -> np.ndarray:
        batches = to_inception_batches(x, self.spatial_dims, self.data_range)
        planes = np.stack([features(b, self.source, self.feature_dims) for b in batches], axis=1)
        # Item-major order (item 0's planes, then item 1's, ...): rows then arrive in the same
        # order however the stream is batched, which KID's subsets and FID's shift rely on.
        return planes.reshape(-1, planes.shape[-1])

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add generated (``pred``) and real (``target``) items; their counts may differ."""
        pred = self._check("pred", pred)
        target = self._check("target", target)
        self.n_fake += pred.shape[0]
        self.n_real += target.shape[0]
        if self.source.available:
            self._add(self._features(target), self._features(pred))

    @abstractmethod
    def _add(self, real: np.ndarray, fake: np.ndarray) -> None:
        """Accumulate the features of one update's real and generated items."""

    def _reset_counts(self) -> None:
        self.n_real = 0
        self.n_fake = 0
        self._clamped = 0
        self._channels = set()

    def _unavailable(self, reason: str | None = None) -> MetricValue:
        settings = {**self.settings(), "status": "unavailable", "reason": reason or self.source.reason}
        return MetricValue(value=float("nan"), std=None, n=self.n_fake, settings=settings)

    def _common_settings(self) -> dict[str, Any]:
        block = BLOCK_NAMES[self.feature_dims]
        settings: dict[str, Any] = {
            "status": "ok" if self.source.available else "unavailable",
            "extractor": f"pytorch-fid InceptionV3 {block} {self.feature_dims}",
            **self.source.provenance(),
            "resize": f"{RESIZE}x{RESIZE} bilinear, align_corners=False (pytorch-fid resize_input=True)",
            "input_scaling": "x / data_range to [0, 1], then 2x - 1 (pytorch-fid normalize_input=True)",
            "channels": "gray repeated to 3 channels; RGB as is",
            "input_channels": sorted(self._channels),
            "data_range": self.data_range,
            "dims": self.spatial_dims,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "out_of_range": self.out_of_range,
            "range_tolerance": RANGE_TOLERANCE * self.data_range,
            "clamped_values": self._clamped,
        }
        if self.spatial_dims == 3:
            settings["slices"] = (
                "2.5D: the three orthogonal centre slices of each volume (D/2, H/2, W/2), "
                "pooled into one feature set (3 feature vectors per volume)"
            )
        if self.source.kind == "unavailable":
            settings["reason"] = self.source.reason
        return settings
