"""The results store: SQLite in WAL mode under the output dir.

One ``results`` row per run x cell x task x metric (value, std, n, and for per-item
metrics the seeded bootstrap 95% interval of the mean over items in ``ci_low``/``ci_high``),
a ``cells`` row per cell with its status, and a ``runs`` row per ``bench run`` invocation. A cell's metric rows and its
``done`` status are committed in one transaction, so a killed run never leaves half a
cell behind, and re-running never duplicates a finished cell. Cells are claimed before
they run, so two ``bench run`` processes sharing one store split the work instead of
doing it twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: results.ci_low / ci_high
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
    reason TEXT, pid INTEGER, host TEXT, started REAL, finished REAL, details TEXT
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, cell_key TEXT NOT NULL, suite TEXT NOT NULL,
    model TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
    task TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, std REAL, n INTEGER, higher_is_better INTEGER,
    settings TEXT NOT NULL, provenance TEXT NOT NULL, created REAL NOT NULL,
    ci_low REAL, ci_high REAL,
    UNIQUE (cell_key, task, metric)
);
"""


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else "?"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """Access to one results database; safe for concurrent writers on one machine."""

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
            # Stores written by schema 1 gain the interval columns (empty for their rows).
            columns = {row[1] for row in cur.execute("PRAGMA table_info(results)")}
            for column in ("ci_low", "ci_high"):
                if column not in columns:
                    cur.execute(f"ALTER TABLE results ADD COLUMN {column} REAL")
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
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
    def cell_status(self, cell_key: str) -> sqlite3.Row | None:
        """The stored row of a cell, if any."""
        return self._conn.execute("SELECT * FROM cells WHERE cell_key=?", (cell_key,)).fetchone()

    def claim_cell(self, cell_key: str, run_id: str, suite: str, model: str, dataset: str, seed: int) -> str:
        """Try to take a cell for this process.

        Returns ``"claimed"``, ``"done"`` (finished earlier: never redone) or ``"busy"``
        (another live process on this host is running it). Failed cells and cells whose
        process died are taken again.
        """
        with self.transaction() as cur:
            row = cur.execute("SELECT status, pid, host FROM cells WHERE cell_key=?", (cell_key,)).fetchone()
            if row is not None:
                if row["status"] == "done":
                    return "done"
                if row["status"] == "running" and row["pid"] != os.getpid():
                    other_host = row["host"] != _host()
                    if other_host or _pid_alive(row["pid"]):
                        return "busy"
            cur.execute(
                "INSERT OR REPLACE INTO cells(cell_key, run_id, suite, model, dataset, seed, status, reason, "
                "pid, host, started) VALUES (?,?,?,?,?,?,'running',NULL,?,?,?)",
                (cell_key, run_id, suite, model, dataset, seed, os.getpid(), _host(), time.time()),
            )
            # A retried cell starts clean: rows of an earlier failed attempt are replaced below.
            cur.execute("DELETE FROM results WHERE cell_key=?", (cell_key,))
        return "claimed"

    def finish_cell(
        self,
        cell_key: str,
        status: str,
        reason: str | None,
        details: dict,
        rows: Iterable[dict[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Commit a cell's metric rows and final status in one transaction; return the rows."""
        written = []
        now = time.time()
        with self.transaction() as cur:
            meta = cur.execute(
                "SELECT run_id, suite, model, dataset, seed FROM cells WHERE cell_key=?", (cell_key,)
            ).fetchone()
            for row in rows:
                full = {
                    "run_id": meta["run_id"], "cell_key": cell_key, "suite": meta["suite"],
                    "model": meta["model"], "dataset": meta["dataset"], "seed": meta["seed"],
                    "created": now, **row,
                }  # fmt: skip
                cur.execute(
                    "INSERT OR REPLACE INTO results(run_id, cell_key, suite, model, dataset, seed, task, metric, "
                    "value, std, n, higher_is_better, settings, provenance, created, ci_low, ci_high) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        full["run_id"], cell_key, full["suite"], full["model"], full["dataset"], full["seed"],
                        full["task"], full["metric"], full["value"], full.get("std"), full.get("n"),
                        None if full.get("higher_is_better") is None else int(full["higher_is_better"]),
                        json.dumps(full.get("settings", {}), sort_keys=True, default=str),
                        json.dumps(full.get("provenance", {}), sort_keys=True, default=str), now,
                        full.get("ci_low"), full.get("ci_high"),
                    ),
                )  # fmt: skip
                written.append(full)
            cur.execute(
                "UPDATE cells SET status=?, reason=?, finished=?, details=?, pid=NULL WHERE cell_key=?",
                (status, reason, now, json.dumps(details, default=str), cell_key),
            )
        return written

    def record_cell(
        self,
        cell_key: str,
        run_id: str,
        suite: str,
        model: str,
        dataset: str,
        seed: int,
        status: str,
        reason: str,
    ) -> None:
        """Record a cell that never ran (skipped as incompatible, or failed before claiming)."""
        with self.transaction() as cur:
            row = cur.execute("SELECT status FROM cells WHERE cell_key=?", (cell_key,)).fetchone()
            if row is not None and row["status"] == "done":
                return
            cur.execute(
                "INSERT OR REPLACE INTO cells(cell_key, run_id, suite, model, dataset, seed, status, reason, "
                "started, finished, details) VALUES (?,?,?,?,?,?,?,?,?,?,'{}')",
                (cell_key, run_id, suite, model, dataset, seed, status, reason, time.time(), time.time()),
            )

    # -- queries ------------------------------------------------------------------------------
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

    def results(self, suite: str | None = None) -> list[dict[str, Any]]:
        """All metric rows (of one suite), with settings and provenance decoded."""
        sql, args = "SELECT * FROM results", ()
        if suite:
            sql, args = sql + " WHERE suite=?", (suite,)
        out = []
        for row in self._conn.execute(sql + " ORDER BY dataset, task, model, seed, metric", args):
            item = dict(row)
            item["settings"] = json.loads(item["settings"])
            item["provenance"] = json.loads(item["provenance"])
            if item["higher_is_better"] is not None:
                item["higher_is_better"] = bool(item["higher_is_better"])
            out.append(item)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """All recorded runs, newest last."""
        out = []
        for row in self._conn.execute("SELECT * FROM runs ORDER BY started"):
            item = dict(row)
            item["provenance"] = json.loads(item["provenance"])
            out.append(item)
        return out
