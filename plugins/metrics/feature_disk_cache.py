"""The on-disk layer of the Inception feature cache: one SQLite file of float32 rows, shared by processes.

Only the real (target) images' features are written, so the features of an unchanged test set
are computed once across runs and processes; generated images change with every model and would
only grow the file. The file (WAL mode, busy timeout, so concurrent processes can share it) lies
under ``bench_core.api.cache_dir() / "inception-features"`` (``$BENCH_CACHE_DIR``) and holds one
row per (extractor, image digest), each with a checksum of its key and bytes. A file that cannot
be opened, read or written, or rows failing their checksum, give a ``warnings.warn`` naming the
file and the features are computed instead; the file may be deleted at any time. Turned off by
the metrics' option ``feature_cache=False`` or by ``BENCH_FEATURE_CACHE=0``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import warnings
from pathlib import Path

import numpy as np

from bench_core.api import cache_dir

FEATURE_CACHE_ENV = "BENCH_FEATURE_CACHE"
DISK_CACHE_FILE = "features-v1.sqlite"
_BUSY_TIMEOUT_S = 60.0  # concurrent writers wait this long for the lock before giving up (warning, no crash)
_SQL_CHUNK = 900  # digests per SELECT: below SQLite's oldest bound-parameter limit (999)


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


def close_disk_caches() -> None:
    """Close every on-disk cache's connection and forget the objects (the files stay)."""
    for store in _DISK_CACHES.values():
        store.close()
    _DISK_CACHES.clear()
