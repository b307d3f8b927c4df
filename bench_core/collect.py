"""Taking the rows of cells that ran elsewhere (local processes, Slurm jobs) into the main store, exactly once.

SQLite in WAL mode needs shared memory between the processes that use a database, which the
network file systems of a cluster do not give across nodes. So a job never opens the main
store: it writes into a store of its own on node-local disk and, when it ends, copies that
store (the SQLite backup API, rollback-journal mode) to ``OUTPUT/jobs/results/NAME.sqlite``
through a temporary name and one atomic rename; a job killed before the rename leaves no
file, and so nothing to merge.

:func:`collect` merges each such file in one immediate transaction of the main store: the
file's runs, and each cell the job finished (done, failed or skipped) with its result rows,
unless the main store already has that cell done (a cell is never counted twice). The same
transaction records the file's content hash in the ``merged`` table; afterwards the file is
renamed to ``NAME.sqlite.merged``. Two collectors at once serialise on the transaction, and
the second finds the hash recorded and only renames. A collector killed after the commit
leaves the hash recorded, so the file is renamed, not merged again, by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bench_core.fileio import replace_atomically
from bench_core.store import ResultsStore, StoreDamaged

__all__ = ["JOB_RESULTS", "PLACEHOLDER_RUN", "Merged", "collect", "export_store", "job_results_dir"]

JOB_RESULTS = Path("jobs") / "results"  # under the output dir: the job stores waiting to be merged
PLACEHOLDER_RUN = "placeholder"  # run_id of cells a job store marks done only so that the job skips them
FINISHED = ("done", "failed", "skipped")

_MERGED_TABLE = """CREATE TABLE IF NOT EXISTS merged (
    file_hash TEXT PRIMARY KEY, file_name TEXT NOT NULL, cells TEXT NOT NULL, merged REAL NOT NULL
)"""


@dataclass(frozen=True)
class Merged:
    """One cell a collector took into the main store."""

    cell_key: str
    status: str
    reason: str | None
    file: str


def job_results_dir(output_dir: Path) -> Path:
    """Where jobs leave their stores: ``OUTPUT/jobs/results``."""
    return Path(output_dir) / JOB_RESULTS


def export_store(source: Path, dest: Path) -> Path:
    """Copy the store ``source`` (any journal mode) to ``dest`` in rollback-journal mode, atomically.

    The copy is written under a temporary name beside ``dest``, synced, and renamed into place,
    so a collector sees the whole file or none.
    """

    def write(tmp: Path) -> None:
        src, out = sqlite3.connect(source), sqlite3.connect(tmp)
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
            src.close()

    replace_atomically(dest, write)
    return dest


def collect(output_dir: str | Path, store: ResultsStore | None = None) -> list[Merged]:
    """Merge every finished job store under ``OUTPUT/jobs/results`` into the main store; return what was taken.

    Idempotent and safe with other collectors running at once (see the module's docstring).
    """
    folder = job_results_dir(Path(output_dir))
    files = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    if not files:
        return []
    own = store is None
    store = store or ResultsStore(output_dir)
    merged: list[Merged] = []
    try:
        with store.transaction() as cur:
            cur.execute(_MERGED_TABLE)
        for path in files:
            merged += _collect_file(store, path)
    finally:
        if own:
            store.close()
    return merged


def _collect_file(store: ResultsStore, path: Path) -> list[Merged]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:  # another collector renamed it meanwhile
        return []
    digest = hashlib.sha256(blob).hexdigest()
    try:
        job = _read_job_store(path)
    except sqlite3.DatabaseError as exc:  # never renamed into place half-written; damaged on disk later
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.damaged-{int(time.time())}"))
        raise StoreDamaged(path, f"{exc}; moved aside, its cells run again on the next `bench run`") from exc
    taken: list[Merged] = []
    with store.transaction() as cur:
        if cur.execute("SELECT 1 FROM merged WHERE file_hash=?", (digest,)).fetchone() is None:
            taken = _merge(cur, job, path.name)
            cur.execute(
                "INSERT INTO merged(file_hash, file_name, cells, merged) VALUES (?,?,?,?)",
                (digest, path.name, json.dumps([m.cell_key for m in taken]), time.time()),
            )
    with contextlib.suppress(FileNotFoundError):  # another collector renamed it first
        os.replace(path, path.with_name(path.name + ".merged"))
    return taken


def _read_job_store(path: Path) -> dict[str, list[dict]]:
    """The runs, cells and results tables of a job store (opened read-only: nobody writes it any more)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {
            table: [dict(row) for row in conn.execute(f"SELECT * FROM {table}")]
            for table in ("runs", "cells", "results")
        }
    finally:
        conn.close()


def _merge(cur: sqlite3.Cursor, job: dict[str, list[dict]], name: str) -> list[Merged]:
    """Insert a job store's runs and finished cells (with their rows) unless the main store has them done."""
    columns = {t: {r[1] for r in cur.execute(f"PRAGMA table_info({t})")} for t in ("runs", "cells", "results")}
    for run in job["runs"]:
        _insert(cur, "OR IGNORE", "runs", run, columns["runs"])
    taken = []
    for cell in job["cells"]:
        if cell["run_id"] == PLACEHOLDER_RUN or cell["status"] not in FINISHED:
            continue  # a cell another job runs, or one this job was stopped in (it leaves no rows)
        key = cell["cell_key"]
        row = cur.execute("SELECT status FROM cells WHERE cell_key=?", (key,)).fetchone()
        if row is not None and row[0] == "done":
            continue  # finished earlier (by another job, or inline): never counted twice
        cur.execute("DELETE FROM results WHERE cell_key=?", (key,))
        _insert(cur, "OR REPLACE", "cells", cell, columns["cells"])
        for result in job["results"]:
            if result["cell_key"] == key:
                _insert(cur, "OR REPLACE", "results", result, columns["results"])
        taken.append(Merged(key, cell["status"], cell["reason"], name))
    return taken


def _insert(cur: sqlite3.Cursor, conflict: str, table: str, row: dict, known: set[str]) -> None:
    names = [c for c in row if c in known]
    cur.execute(
        f"INSERT {conflict} INTO {table}({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [row[c] for c in names],
    )
