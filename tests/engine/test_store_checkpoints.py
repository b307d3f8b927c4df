"""Results store semantics, checkpoint safety and leaderboard aggregation."""

import multiprocessing as mp
import sqlite3

import pytest
import torch

from bench_core.checkpoints import CheckpointError, load_train_state, load_weights, save_weights
from bench_core.store import CellIdentity, ResultsStore, claimant
from bench_core.tables import build_tables, to_markdown


def row(metric="m", value=1.0, task="recon", settings=None, higher=True, std=0.1, n=4):
    return {"task": task, "metric": metric, "value": value, "std": std, "n": n, "higher_is_better": higher,
            "settings": settings or {"data_range": 1}, "provenance": {}}  # fmt: skip


def test_claim_finish_and_never_redo(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.path.name == "results.sqlite"
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.start_run("r1", "s", "h", [], {})
    assert store.claim_cell(CellIdentity("k", "s", "model", "data", 0), "r1") == "claimed"
    store.finish_cell("k", "done", None, {"x": 1}, [row(), row("m2")])
    assert store.claim_cell(CellIdentity("k", "s", "model", "data", 0), "r2") == "done"
    assert len(store.results("s")) == 2
    assert store.cells("s")[0]["details"] == {"x": 1}
    store.close()


def test_failed_cell_is_retried_and_old_rows_dropped(tmp_path):
    store = ResultsStore(tmp_path)
    store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r1")
    store.finish_cell("k", "failed", "boom", {}, [row()])
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "claimed"
    assert store.results() == []
    store.close()


def test_running_cell_of_dead_process_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r1")
    dead = claimant(999999999)  # a pid that does not exist
    store._conn.execute("UPDATE cells SET pid=999999999, claimant=? WHERE cell_key='k'", (dead,))
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "claimed"
    store._conn.execute("UPDATE cells SET pid=1, claimant=? WHERE cell_key='k'", (claimant(1),))  # init: alive
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r3") == "busy"
    store.close()


def _worker(path, worker, n, queue):
    store = ResultsStore(path)
    got = []
    for i in range(n):
        key = f"cell{i}"
        if store.claim_cell(CellIdentity(key, "s", f"m{i}", "d", 0), f"run{worker}") == "claimed":
            store.finish_cell(key, "done", None, {}, [row(value=float(worker))])
            got.append(key)
    store.close()
    queue.put(got)


def test_two_processes_share_a_store_without_duplicates(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, 40, queue)) for w in range(2)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == sorted(f"cell{i}" for i in range(40))
    con = sqlite3.connect(tmp_path / "results.sqlite")
    assert con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT cell_key) FROM results WHERE kind != 'baseline'"
    ).fetchone() == (40, 40)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    save_weights(model, tmp_path / "ck", {"note": "x"})
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    load_weights(other, tmp_path / "ck" / "model.safetensors")
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wrong = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))
    with pytest.raises(CheckpointError, match=r"6 shape mismatches \(e.g. 0.bias: file \(4,\), model \(5,\)\)"):
        load_weights(wrong, tmp_path / "ck" / "model.safetensors")
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or not a weights file"):
        load_weights(other, corrupt)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(other, tmp_path / "missing.pt")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="could not be loaded safely|corrupt"):
        load_weights(torch.nn.Linear(2, 2), path)
    torch.save(Evil(), tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="delete it to restart"):
        load_train_state(tmp_path / "state.pt")


def _results(*specs):
    out = []
    for model, seed, value, settings in specs:
        r = row(value=value, settings=settings)
        out.append({**r, "model": model, "dataset": "d", "seed": seed})
    return out


def test_tables_mean_over_seeds_and_best():
    tables = build_tables(_results(("a", 0, 0.5, None), ("a", 1, 0.7, None), ("b", 0, 0.9, None)))
    (table,) = tables
    a, b = table.rows["a"]["m"], table.rows["b"]["m"]
    assert a.mean == pytest.approx(0.6) and a.spread_over == "seeds" and a.n_seeds == 2
    assert a.spread == pytest.approx(0.1414213, rel=1e-5)
    assert b.spread_over == "items" and b.spread == 0.1
    assert b.best and not a.best
    assert "**0.9 ± 0.1**" in to_markdown(tables)


def test_incomparable_settings_are_not_ranked():
    tables = build_tables(_results(("a", 0, 0.5, {"preset": "skimage"}), ("b", 0, 0.9, {"preset": "gaussian"})))
    assert tables[0].incomparable == ["m"]
    assert not any(agg.best for aggs in tables[0].rows.values() for agg in aggs.values())
    assert "Not ranked" in to_markdown(tables)


def test_unavailable_metric_shows_its_status():
    unavailable = {"status": "unavailable", "reason": "FID Inception weights not found"}
    tables = build_tables(_results(("a", 0, None, unavailable)))
    assert tables[0].rows["a"]["m"].text() == "unavailable"
    assert build_tables(_results(("a", 0, None, None)))[0].rows["a"]["m"].text() == "n/a"
