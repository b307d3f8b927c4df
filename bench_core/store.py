"""The results store: SQLite in WAL mode under the output dir.

One ``results`` row per run x cell x task x metric (a :class:`bench_core.rows.ResultRow`: value,
std, n, and for per-item metrics the seeded bootstrap 95% interval of the mean over items in
``ci_low``/``ci_high``; its settings and, apart from them, its counters),
a ``cells`` row per cell with its status, and a ``runs`` row per ``bench run`` invocation. A cell's metric rows and its
``done`` status are committed in one transaction, so a killed run never leaves half a
cell behind, and re-running never duplicates a finished cell. Cells are claimed before
they run, so two ``bench run`` processes sharing one store split the work instead of
doing it twice.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.fileio import pid_alive
from bench_core.rows import ROW_KINDS, ResultRow, as_row

__all__ = [
    "ROW_KINDS", "STORE_NAME", "CellIdentity", "ResultsStore", "StoreDamaged", "claim_is_live", "claimant", "is_damage",
]  # fmt: skip

SCHEMA_VERSION = 5  # 2: results.ci_low / ci_high; 3: results.kind, cells.kind, claim identity, plans; 4: counters;
# 5: a NaN in results.value, std, ci_low, ci_high is the text "nan" (it was NULL, like a missing value)
STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT NOT NULL, suite_hash TEXT NOT NULL,
    started REAL NOT NULL, finished REAL, argv TEXT, provenance TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, suite TEXT NOT NULL,
    model TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'skipped')),
    reason TEXT, pid INTEGER, host TEXT, started REAL, finished REAL, details TEXT,
    kind TEXT NOT NULL DEFAULT 'model', claimant TEXT, heartbeat REAL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, cell_key TEXT NOT NULL, suite TEXT NOT NULL,
    model TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
    task TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, std REAL, n INTEGER, higher_is_better INTEGER,
    settings TEXT NOT NULL, provenance TEXT NOT NULL, created REAL NOT NULL,
    ci_low REAL, ci_high REAL, kind TEXT NOT NULL DEFAULT 'metric', counters TEXT,
    UNIQUE (cell_key, task, metric)
);
CREATE TABLE IF NOT EXISTS plans (
    suite TEXT PRIMARY KEY, run_id TEXT NOT NULL, cell_keys TEXT NOT NULL, recorded REAL NOT NULL
);
"""

# Columns added after schema 1, with the definition an older store gains them with.
_ADDED_COLUMNS = {
    "results": {"ci_low": "REAL", "ci_high": "REAL", "kind": "TEXT NOT NULL DEFAULT 'metric'", "counters": "TEXT"},
    "cells": {"kind": "TEXT NOT NULL DEFAULT 'model'", "claimant": "TEXT", "heartbeat": "REAL"},
}
# Rows written before schema 3 get their kind from the engine's fixed metric names.
_KIND_OF_OLD_ROWS = (
    "UPDATE results SET kind = CASE WHEN metric LIKE '%images_per_s' THEN 'throughput' "
    "WHEN metric LIKE '%peak_memory_mb' THEN 'memory' WHEN task = 'model' THEN 'model' ELSE 'metric' END"
)
HEARTBEAT_S = 60.0  # how often a running cell's claim is refreshed
STALE_AFTER_S = 600.0  # a claim from another host with no heartbeat for this long is taken over


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else "?"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ('' when unknown or not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 (starttime); the command name in field 2 may hold spaces, so count from its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def claimant(pid: int | None = None) -> str:
    """Who holds a claim: host, boot id, pid and the process's start time, so a reused pid is no match."""
    pid = os.getpid() if pid is None else pid
    return f"{_host()}|{_boot_id()}|{pid}|{_process_start(pid)}"


def claim_is_live(row: sqlite3.Row | dict[str, Any], now: float | None = None) -> bool:
    """Whether the process that claimed a running cell can still be running it.

    On this host: the same boot, and the claimed pid still runs with the same start time
    (after a reboot or once the pid is reused by another program the claim is dead). On
    another host, which cannot be asked: a heartbeat within :data:`STALE_AFTER_S`.
    """
    token = row["claimant"]
    if not token:  # claimed by a store before schema 3: pid and host only
        return row["host"] != _host() or bool(row["pid"]) and pid_alive(row["pid"])
    host, boot, pid, start = token.split("|")
    if host != _host():
        beat = row["heartbeat"] or row["started"] or 0.0
        return (now or time.time()) - beat < STALE_AFTER_S
    if boot != _boot_id():
        return False
    return _process_start(int(pid)) == start if start else pid_alive(int(pid))


@dataclass(frozen=True)
class CellIdentity:
    """What the ``cells`` table says a cell is: its key, and the suite, model, dataset, seed and kind it stands for."""

    cell_key: str
    suite: str
    model: str
    dataset: str
    seed: int
    kind: str = "model"


class StoreDamaged(BenchError):
    """The results store file is not a readable database (truncated, overwritten, malformed)."""

    def __init__(self, path: Path, cause: str):
        self.path, self.cause = path, cause
        target = path.parent if path.name == STORE_NAME else path
        super().__init__(
            f"results store {path} is damaged ({cause}); run `bench doctor {target}` to check it and rebuild "
            "what can be rebuilt without retraining, or move it aside (the next `bench run` re-evaluates "
            "every cell from its stored checkpoint)"
        )


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether an sqlite3 error says the database file itself is damaged.

    sqlite3 raises the base ``DatabaseError`` itself for a corrupt, truncated or foreign
    file (SQLITE_CORRUPT, SQLITE_NOTADB); locks, I/O and constraint errors have subclasses.
    """
    return type(exc) is sqlite3.DatabaseError


def _guarded(method):
    """Make a store method raise :class:`StoreDamaged` where SQLite finds the file damaged.

    A generator method (``transaction``) is guarded across its ``yield``, so statements
    run inside the transaction are covered too. Costs one frame on the happy path.
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                return (yield from method(self, *args, **kwargs))
            except sqlite3.DatabaseError as exc:
                if is_damage(exc):
                    raise StoreDamaged(self.path, str(exc)) from exc
                raise

        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise StoreDamaged(self.path, str(exc)) from exc
            raise

    return wrapper


class ResultsStore:
    """Access to one results database; safe for concurrent writers on one machine."""

    @_guarded
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".sqlite":
            self.path = self.path / STORE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        with self.transaction() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            # Older stores gain the newer columns (empty or defaulted for their rows).
            for table, added in _ADDED_COLUMNS.items():
                columns = {row[1] for row in cur.execute(f"PRAGMA table_info({table})")}
                for column, definition in added.items():
                    if column not in columns:
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                        if (table, column) == ("results", "kind"):
                            cur.execute(_KIND_OF_OLD_ROWS)
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    @_guarded
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """An immediate (write-locking) transaction committed on success, rolled back on error."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, run_id: str, suite: str, suite_hash: str, argv: list[str], provenance: dict) -> None:
        """Record the start of a ``bench run`` invocation."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO runs(run_id, suite, suite_hash, started, argv, provenance) VALUES (?,?,?,?,?,?)",
                (run_id, suite, suite_hash, time.time(), json.dumps(argv), json.dumps(provenance)),
            )

    def finish_run(self, run_id: str) -> None:
        """Record the end of a run."""
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    # -- cells --------------------------------------------------------------------------------
    @_guarded
    def cell_status(self, cell_key: str) -> sqlite3.Row | None:
        """The stored row of a cell, if any."""
        return self._conn.execute("SELECT * FROM cells WHERE cell_key=?", (cell_key,)).fetchone()

    def claim_cell(self, cell: CellIdentity, run_id: str) -> str:
        """Try to take ``cell`` for this process, in run ``run_id``.

        Returns ``"claimed"``, ``"done"`` (finished earlier: never redone) or ``"busy"``
        (another live process is running it, see :func:`claim_is_live`). Failed cells and
        cells whose process died are taken again.
        """
        me = claimant()
        now = time.time()
        with self.transaction() as cur:
            row = cur.execute("SELECT * FROM cells WHERE cell_key=?", (cell.cell_key,)).fetchone()
            if row is not None:
                if row["status"] == "done":
                    return "done"
                if row["status"] == "running" and row["claimant"] != me and claim_is_live(row, now):
                    return "busy"
            cur.execute(
                "INSERT OR REPLACE INTO cells(cell_key, run_id, suite, model, dataset, seed, status, reason, "
                "pid, host, started, kind, claimant, heartbeat) VALUES (?,?,?,?,?,?,'running',NULL,?,?,?,?,?,?)",
                (cell.cell_key, run_id, cell.suite, cell.model, cell.dataset, cell.seed, os.getpid(), _host(), now,
                 cell.kind, me, now),
            )  # fmt: skip
            # A retried cell starts clean: rows of an earlier failed attempt are replaced below.
            cur.execute("DELETE FROM results WHERE cell_key=?", (cell.cell_key,))
        return "claimed"

    def holder(self, cell_key: str) -> str:
        """Who runs a busy cell, for messages: ``pid P on HOST since TIME, last heartbeat S s ago``."""
        row = self.cell_status(cell_key)
        if row is None:
            return "nobody"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started"] or 0))
        beat = f", last heartbeat {time.time() - row['heartbeat']:.0f} s ago" if row["heartbeat"] else ""
        return f"pid {row['pid']} on {row['host']} since {since}{beat}"

    @contextmanager
    def heartbeat(self, cell_key: str, every: float = HEARTBEAT_S) -> Iterator[None]:
        """Refresh this process's claim on ``cell_key`` every ``every`` seconds while the block runs.

        The refresh uses its own connection from a daemon thread, so a long training step
        never delays it; it lets processes on other hosts tell a live claim from a dead one.
        """
        stop = threading.Event()
        me = claimant()

        def beat() -> None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                while not stop.wait(every):
                    conn.execute(
                        "UPDATE cells SET heartbeat=? WHERE cell_key=? AND claimant=? AND status='running'",
                        (time.time(), cell_key, me),
                    )
            except sqlite3.Error:
                pass  # a missed heartbeat only makes the claim look older to other hosts
            finally:
                conn.close()

        thread = threading.Thread(target=beat, name=f"heartbeat-{cell_key[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish_cell(
        self,
        cell_key: str,
        status: str,
        reason: str | None,
        details: dict,
        rows: Iterable[ResultRow | dict[str, Any]] = (),
    ) -> list[ResultRow]:
        """Commit a cell's result rows and final status in one transaction; return the rows as written."""
        written = []
        now = time.time()
        with self.transaction() as cur:
            meta = cur.execute(
                "SELECT run_id, suite, model, dataset, seed FROM cells WHERE cell_key=?", (cell_key,)
            ).fetchone()
            for row in rows:
                full = as_row(row).replace(cell_key=cell_key, created=now, **dict(meta))
                cur.execute(_INSERT_RESULT, _result_values(full))
                written.append(full)
            cur.execute(
                "UPDATE cells SET status=?, reason=?, finished=?, details=?, pid=NULL, claimant=NULL WHERE cell_key=?",
                (status, reason, now, json.dumps(details, default=str), cell_key),
            )
        return written

    def record_cell(self, cell: CellIdentity, run_id: str, status: str, reason: str) -> None:
        """Record a cell that never ran (skipped as incompatible, or failed before claiming)."""
        with self.transaction() as cur:
            row = cur.execute("SELECT status FROM cells WHERE cell_key=?", (cell.cell_key,)).fetchone()
            if row is not None and row["status"] == "done":
                return
            now = time.time()
            cur.execute(
                "INSERT OR REPLACE INTO cells(cell_key, run_id, suite, model, dataset, seed, status, reason, "
                "started, finished, details, kind) VALUES (?,?,?,?,?,?,?,?,?,?,'{}',?)",
                (cell.cell_key, run_id, cell.suite, cell.model, cell.dataset, cell.seed, status, reason, now, now,
                 cell.kind),
            )  # fmt: skip

    # -- plans --------------------------------------------------------------------------------
    def record_plan(self, suite: str, run_id: str, cell_keys: Iterable[str]) -> None:
        """Record the keys of every cell of ``suite`` as it is now (what tables show; older cells are superseded)."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO plans(suite, run_id, cell_keys, recorded) VALUES (?,?,?,?)",
                (suite, run_id, json.dumps(sorted(set(cell_keys))), time.time()),
            )

    @_guarded
    def plan_keys(self, suite: str) -> set[str] | None:
        """The cell keys of ``suite``'s latest plan, or ``None`` for a store written before plans were kept."""
        row = self._conn.execute("SELECT cell_keys FROM plans WHERE suite=?", (suite,)).fetchone()
        return None if row is None else set(json.loads(row["cell_keys"]))

    # -- queries ------------------------------------------------------------------------------
    @_guarded
    def cells(self, suite: str | None = None) -> list[dict[str, Any]]:
        """All cells (of one suite), decoded."""
        sql, args = "SELECT * FROM cells", ()
        if suite:
            sql, args = sql + " WHERE suite=?", (suite,)
        out = []
        for row in self._conn.execute(sql + " ORDER BY model, dataset, seed", args):
            item = dict(row)
            item["details"] = json.loads(item["details"] or "{}")
            out.append(item)
        return out

    @_guarded
    def results(self, suite: str | None = None) -> list[ResultRow]:
        """All result rows (of one suite), in table order."""
        sql, args = "SELECT * FROM results", ()
        if suite:
            sql, args = sql + " WHERE suite=?", (suite,)
        out = []
        for row in self._conn.execute(sql + " ORDER BY dataset, task, model, seed, metric", args):
            item = dict(row)
            for column in _JSON_COLUMNS:
                item[column] = json.loads(item[column] or "{}")
            for column in _NUMBER_COLUMNS:
                item[column] = math.nan if item[column] == NAN_TEXT else item[column]
            out.append(ResultRow.from_stored(item))
        return out

    @_guarded
    def runs(self) -> list[dict[str, Any]]:
        """All recorded runs, newest last."""
        out = []
        for row in self._conn.execute("SELECT * FROM runs ORDER BY started"):
            item = dict(row)
            item["provenance"] = json.loads(item["provenance"])
            out.append(item)
        return out


_JSON_COLUMNS = ("settings", "provenance", "counters")
_NUMBER_COLUMNS = ("value", "std", "ci_low", "ci_high")
NAN_TEXT = "nan"
"""How a NaN is stored in the REAL columns of ``results``: SQLite would store it as NULL, merging an
undefined value with a missing one (infinities are stored as REAL infinities)."""
_RESULT_COLUMNS = (
    "run_id", "cell_key", "suite", "model", "dataset", "seed", "task", "metric", "value", "std", "n",
    "higher_is_better", "settings", "provenance", "created", "ci_low", "ci_high", "kind", "counters",
)  # fmt: skip
_INSERT_RESULT = (
    f"INSERT OR REPLACE INTO results({', '.join(_RESULT_COLUMNS)}) VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})"
)


def _result_values(row: ResultRow) -> tuple[Any, ...]:
    """The values of ``row`` for :data:`_INSERT_RESULT`: JSON columns encoded, the direction as 0/1."""
    values = row.as_dict()
    for column in _JSON_COLUMNS:
        values[column] = json.dumps(values[column], sort_keys=True, default=str)
    if values["higher_is_better"] is not None:
        values["higher_is_better"] = int(values["higher_is_better"])
    for column in _NUMBER_COLUMNS:
        if isinstance(values[column], float) and math.isnan(values[column]):
            values[column] = NAN_TEXT
    return tuple(values[c] for c in _RESULT_COLUMNS)
