"""Merging job stores into the main store: exactly once, whole or not at all, safe with collectors at once."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

from cluster_helpers import query

from bench_core.collect import PLACEHOLDER_RUN, collect, export_store, job_results_dir
from bench_core.rows import ResultRow
from bench_core.store import CellIdentity, ResultsStore


def _job_store(folder: Path, name: str, cells: dict[str, str], running: tuple[str, ...] = (),
               skips: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """A job's node-local store: ``cells`` (key -> status) finished with two rows each, ``running`` still claimed."""
    path = folder / f"{name}.local" / "results.sqlite"
    store = ResultsStore(path)
    store.start_run(f"run-{name}", "toy", "hash", ["run"], {"device": "cpu"})
    for key in skips:
        store.record_cell(CellIdentity(key, "toy", "-", "-", 0), PLACEHOLDER_RUN, "done", "run by another job")
    for key, status in {**cells, **dict.fromkeys(running, "running")}.items():
        assert store.claim_cell(CellIdentity(key, "toy", f"model-{key}", "data", 0), f"run-{name}") == "claimed"
        if status != "running":
            rows = [ResultRow(task="recon", metric=m, value=1.0, n=4) for m in ("mae", "gap")]
            rows = rows if status == "done" else []
            store.finish_cell(key, status, None if status == "done" else "boom", {}, rows)
    store.close()
    return path


def _leave(output_dir: Path, local: Path, name: str) -> Path:
    return export_store(local, job_results_dir(output_dir) / f"{name}.sqlite")


def test_each_finished_cell_is_merged_once_and_the_file_renamed(tmp_path):
    out = tmp_path / "out"
    ResultsStore(out).close()
    _leave(out, _job_store(tmp_path, "a", {"k1": "done", "k2": "failed"}, running=("k3",), skips=("k0",)), "a")
    merged = collect(out)
    assert sorted((m.cell_key, m.status) for m in merged) == [("k1", "done"), ("k2", "failed")]
    store = out / "results.sqlite"
    # The cell the job was stopped in and the cell it only skipped are not taken in.
    assert query(store, "SELECT cell_key, status FROM cells ORDER BY cell_key") == [("k1", "done"), ("k2", "failed")]
    assert query(store, "SELECT cell_key, COUNT(*) FROM results GROUP BY cell_key") == [("k1", 2)]
    assert query(store, "SELECT run_id FROM runs") == [("run-a",)]
    assert [p.name for p in job_results_dir(out).iterdir()] == ["a.sqlite.merged"]
    assert collect(out) == []  # nothing left to take


def test_a_done_cell_is_never_replaced_and_a_failed_one_is(tmp_path):
    out = tmp_path / "out"
    ResultsStore(out).close()
    _leave(out, _job_store(tmp_path, "first", {"k1": "done", "k2": "failed"}), "first")
    collect(out)
    # A second job ran both again (a retry, or a requeued job that repeated a finished cell).
    _leave(out, _job_store(tmp_path, "second", {"k1": "failed", "k2": "done"}), "second")
    collect(out)
    store = out / "results.sqlite"
    assert query(store, "SELECT cell_key, status, run_id FROM cells ORDER BY cell_key") == [
        ("k1", "done", "run-first"), ("k2", "done", "run-second")]  # fmt: skip
    assert query(store, "SELECT cell_key, run_id, COUNT(*) FROM results GROUP BY cell_key ORDER BY cell_key") == [
        ("k1", "run-first", 2), ("k2", "run-second", 2)]  # fmt: skip


def test_a_collector_killed_before_its_rename_never_merges_twice(tmp_path):
    out = tmp_path / "out"
    ResultsStore(out).close()
    left = _leave(out, _job_store(tmp_path, "a", {"k1": "done"}), "a")
    kept = tmp_path / "copy.sqlite"
    shutil.copy(left, kept)
    collect(out)
    shutil.copy(kept, left)  # as if the collector had died between its commit and the rename
    assert collect(out) == []
    assert query(out / "results.sqlite", "SELECT COUNT(*) FROM results") == [(2,)]
    assert not left.exists()


def test_half_written_exports_are_ignored(tmp_path):
    out = tmp_path / "out"
    ResultsStore(out).close()
    folder = job_results_dir(out)
    folder.mkdir(parents=True)
    (folder / ".a.sqlite.123.abc.tmp").write_bytes(b"SQLite format 3\x00 half")  # a job killed mid-export
    assert collect(out) == []
    assert query(out / "results.sqlite", "SELECT COUNT(*) FROM cells") == [(0,)]


def _collect_in_process(out: str) -> int:
    return len(collect(out))


def test_collectors_at_once_merge_every_file_once(tmp_path):
    out = tmp_path / "out"
    ResultsStore(out).close()
    for i in range(6):
        _leave(out, _job_store(tmp_path, f"j{i}", {f"k{i}": "done", "shared": "done"}), f"j{i}")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        taken = pool.map(_collect_in_process, [str(out)] * 3)
    # Six job files, each with its own cell and one cell they all ran: 6 + 1 cells taken, over all collectors.
    assert sum(taken) == 7
    store = out / "results.sqlite"
    assert query(store, "SELECT COUNT(*), COUNT(DISTINCT file_hash) FROM merged") == [(6, 6)]
    assert query(store, "SELECT COUNT(*) FROM cells WHERE status='done'") == [(7,)]
    assert query(store, "SELECT COUNT(*) FROM results") == [(14,)]
    assert sorted(p.suffix for p in job_results_dir(out).iterdir()) == [".merged"] * 6
