"""Inception features of images, through a two-layer cache: the extractor the distribution metrics share.

The metrics reach it through :class:`.features.InceptionSpace` (their option ``features="inception"``).
The job is split by module: where the weights come from (:mod:`.inception_weights`, offline only),
the network (:mod:`.inception_network`, pytorch-fid's FID InceptionV3 and its preprocessing), the
on-disk layer of the cache (:mod:`.feature_disk_cache`) and, here, the in-memory layer and
:func:`features`, which looks images up in both before running the network. Gray images are
repeated to three channels by the caller.

Both cache layers are keyed by content, never by a name (dataset label, file name):

- *in memory*: a BLAKE2 digest of each network input (the ``[0, 1]`` float32 3-channel image
  before resizing) and the extractor identity, so FID and KID configured together, or several
  models evaluated against the same test images in one process, run the network once per
  distinct image;
- *on disk*, for the real (target) images only: the extractor key is the weights identity (full
  SHA-256 of the file, or ``random:SEED``), the block (``feature_dims``) and
  :data:`.inception_network.PREPROCESSING`. Nothing about the cache enters the settings: it
  never changes which features are used, only whether they are recomputed.

A cached feature was computed in whatever batch (and on whatever device) first saw the image;
kernels can differ in the last float32 bits between batch compositions and devices (more with
TF32 convolutions on CUDA), which moves FID far below its sampling noise.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .feature_disk_cache import close_disk_caches, disk_cache, disk_cache_enabled
from .inception_network import PREPROCESSING, network, source_key
from .inception_weights import WeightsSource

# Images per network call: bounds activation memory at 299x299 (~40 MB per image in float32).
_CHUNK = 32
# Feature cache budget in bytes (float32 features: 8 KiB per image at 2048 dims, so ~32k images).
_CACHE_BYTES = 256 * 1024 * 1024

_FEATURES: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
_FEATURE_BYTES = 0


@dataclass
class CacheCounters:
    """Where the features of :func:`features` came from since the last :func:`clear_cache`.

    ``memory`` counts images (positions), ``disk`` and ``computed`` distinct images.
    """

    memory: int = 0
    disk: int = 0
    computed: int = 0


COUNTERS = CacheCounters()


def _digest(image: torch.Tensor) -> bytes:
    data = image.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.blake2b(str(data.shape).encode(), digest_size=16)
    digest.update(data.tobytes())
    return digest.digest()


@torch.no_grad()
def features(images: torch.Tensor, source: WeightsSource, feature_dims: int, disk: bool = False) -> np.ndarray:
    """Features ``(N, feature_dims)`` float32 of ``(N, 3, H, W)`` images in ``[0, 1]``, via the caches.

    ``disk=True`` also looks the images up in, and writes computed features to, the on-disk
    cache (unless ``$BENCH_FEATURE_CACHE`` turns it off); the in-memory cache is always used.
    """
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
    return _remember(new, keys)


def _remember(new: dict[tuple[str, bytes], np.ndarray], keys: list[tuple[str, bytes]]) -> np.ndarray:
    """Add ``new`` to the in-memory cache, return the rows of ``keys`` and evict the least recently used."""
    global _FEATURE_BYTES
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
    close_disk_caches()
