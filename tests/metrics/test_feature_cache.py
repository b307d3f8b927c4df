"""On-disk Inception feature cache: content-keyed reuse across processes, misses, corruption, opt-out, locking."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from bench_core.api import BenchError, cache_dir
from bench_plugins.metrics import feature_disk_cache, inception, inception_network, inception_weights
from bench_plugins.metrics.fid import FID
from bench_plugins.metrics.kid import KID

RANDOM = "random:0"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    """One thread, a private cache folder, no in-memory features, and a count of images run through the network."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(feature_disk_cache.FEATURE_CACHE_ENV, raising=False)
    inception.clear_cache()
    forward = inception_network.InceptionFeatures.forward
    seen = {"images": 0}

    def counting(self, x):
        seen["images"] += len(x)
        return forward(self, x)

    monkeypatch.setattr(inception_network.InceptionFeatures, "forward", counting)
    yield seen
    inception.clear_cache()
    torch.set_num_threads(before)


def images(n: int, seed: int, size: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 4, 4), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_second_process_reads_the_disk_cache_not_the_network(fresh_cache):
    x = images(4, seed=1)
    source = inception_weights.resolve_weights(RANDOM)
    first = inception.features(x, source, 64, disk=True)
    assert fresh_cache["images"] == 4 and inception.COUNTERS.computed == 4
    assert (cache_dir() / "inception-features" / feature_disk_cache.DISK_CACHE_FILE).is_file()
    inception.clear_cache()  # a new process: nothing in memory
    fresh_cache["images"] = 0
    again = inception.features(x.flip(0).clone(), source, 64, disk=True)  # keyed by content, not position
    assert fresh_cache["images"] == 0 and inception.COUNTERS.disk == 4 and inception.COUNTERS.computed == 0
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again, first[::-1])  # bit-identical


def test_fid_is_identical_with_real_features_from_disk(fresh_cache):
    real, fake = images(5, seed=2), images(4, seed=3)
    first = FID(weights=RANDOM, feature_dims=64)
    first.update(fake, real)
    cold = first.compute()
    inception.clear_cache()
    fresh_cache["images"] = 0
    second = FID(weights=RANDOM, feature_dims=64)
    second.update(fake, real)
    warm = second.compute()
    # Real images came from disk; generated ones are never written there, so only they ran again.
    assert fresh_cache["images"] == 4 and inception.COUNTERS.disk == 5
    assert warm.value == cold.value and warm.settings == cold.settings


@pytest.mark.parametrize("other", [("random:1", 64), (RANDOM, 192)])
def test_other_weights_or_block_miss(fresh_cache, other):
    x = images(3, seed=4)
    inception.features(x, inception_weights.resolve_weights(RANDOM), 64, disk=True)
    inception.clear_cache()
    weights, dims = other
    out = inception.features(x, inception_weights.resolve_weights(weights), dims, disk=True)
    assert inception.COUNTERS.disk == 0 and inception.COUNTERS.computed == 3 and out.shape == (3, dims)


def _reference(x: torch.Tensor) -> np.ndarray:
    """Features computed without any cache, in the same batch (memory cleared before and after)."""
    inception.clear_cache()
    out = inception.features(x, inception_weights.resolve_weights(RANDOM), 64, disk=False)
    inception.clear_cache()
    return out


@pytest.mark.parametrize("damage", ["garbage file", "folder is a file"])
def test_unusable_cache_warns_and_computes(damage):
    x = images(3, seed=5)
    source = inception_weights.resolve_weights(RANDOM)
    inception.features(x, source, 64, disk=True)
    expected = _reference(x)
    path = feature_disk_cache.disk_cache_path()
    if damage == "garbage file":
        path.write_bytes(b"this is not an SQLite database" * 100)
    else:
        for file in path.parent.iterdir():
            file.unlink()
        path.parent.rmdir()
        path.parent.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="Inception feature cache .*cannot be read") as record:
        got = inception.features(x, source, 64, disk=True)
    assert str(path) in str(record[0].message)
    np.testing.assert_array_equal(got, expected)
    assert inception.COUNTERS.computed == 3


def test_damaged_rows_fail_their_checksum_and_are_rewritten():
    x = images(3, seed=6)
    source = inception_weights.resolve_weights(RANDOM)
    inception.features(x, source, 64, disk=True)
    expected = _reference(x)
    conn = sqlite3.connect(feature_disk_cache.disk_cache_path())  # damage two stored rows
    with conn:
        two = "SELECT digest FROM features LIMIT 2"
        conn.execute(f"UPDATE features SET data = zeroblob(length(data)) WHERE digest IN ({two})")
    conn.close()
    inception.clear_cache()
    with pytest.warns(RuntimeWarning, match="2 stored feature rows fail their checksum"):
        got = inception.features(x, source, 64, disk=True)
    np.testing.assert_array_equal(got, expected)
    assert (inception.COUNTERS.disk, inception.COUNTERS.computed) == (1, 2)
    inception.clear_cache()
    inception.features(x, source, 64, disk=True)  # repaired: all from disk, no warning (pytest errors on none)
    assert inception.COUNTERS.disk == 3


@pytest.mark.parametrize("how", ["option", "environment"])
def test_cache_off_never_touches_the_disk(monkeypatch, how):
    def refuse(*args, **kwargs):
        raise AssertionError("the disk cache was opened")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    options = {"feature_cache": False} if how == "option" else {}
    if how == "environment":
        monkeypatch.setenv(feature_disk_cache.FEATURE_CACHE_ENV, "0")
    for cls in (FID, KID):
        metric = cls(weights=RANDOM, feature_dims=64, **options)
        metric.update(images(3, seed=7), images(3, seed=8))
        assert np.isfinite(metric.compute().value)
    assert not cache_dir().exists()
    with pytest.raises(BenchError, match="feature_cache must be true or false"):
        FID(weights=RANDOM, feature_dims=64, feature_cache="no")


@pytest.mark.parametrize("cls", [FID, KID])
def test_cache_changes_neither_value_nor_settings(cls):
    # Settings decide comparability: a cached and an uncached run must rank together.
    results = []
    for feature_cache in (False, True, True):  # computed, computed and stored, read back
        inception.clear_cache()
        metric = cls(weights=RANDOM, feature_dims=64, feature_cache=feature_cache)
        metric.update(images(3, seed=9), images(3, seed=10))
        results.append(metric.compute())
    assert inception.COUNTERS.disk == 3
    assert results[0].value == results[1].value == results[2].value
    assert results[0].settings == results[1].settings == results[2].settings


def test_reads_proceed_while_another_process_writes_and_a_stuck_lock_only_stops_writes(monkeypatch):
    monkeypatch.setattr(feature_disk_cache, "_BUSY_TIMEOUT_S", 0.2)
    store = feature_disk_cache.FeatureDiskCache(feature_disk_cache.disk_cache_path())
    rows = [(bytes([i]) * 16, np.full(64, i, np.float32)) for i in range(3)]
    store.put("x", rows[:2])
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        got = store.get("x", [d for d, _ in rows], 64)  # WAL: readers are not blocked by the writer
        assert sorted(got) == [rows[0][0], rows[1][0]]
        np.testing.assert_array_equal(got[rows[1][0]], rows[1][1])
        with pytest.warns(RuntimeWarning, match="cannot be written"):
            store.put("x", rows[2:])
        assert store.writes_failed and not store.failed
        assert len(store.get("x", [rows[0][0]], 64)) == 1
    finally:
        other.rollback()
        other.close()
        store.close()
