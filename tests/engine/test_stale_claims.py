"""Claims of cells: a dead claimant is recognised, a live one is reported, and the exit code says so."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

from toy_suites import toy_suite

from bench_core.store import STALE_AFTER_S, CellIdentity, ResultsStore, claimant


def _claim(store: ResultsStore, token: str, heartbeat: float | None = None) -> None:
    store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r1")
    pid = int(token.split("|")[2])
    store._conn.execute("UPDATE cells SET claimant=?, pid=?, heartbeat=? WHERE cell_key='k'", (token, pid, heartbeat))


def test_claim_from_before_a_reboot_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    host, _, pid, start = claimant(os.getppid()).split("|")  # a live process, but another boot
    _claim(store, "|".join([host, "another-boot-id", pid, start]))
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "claimed"
    store.close()


def test_claim_of_a_reused_pid_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    host, boot, pid, start = claimant(os.getppid()).split("|")  # the pid runs, but started at another time
    _claim(store, "|".join([host, boot, pid, str(int(start) + 12345)]))
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "claimed"
    store.close()


def test_claim_of_a_live_process_stays_busy(tmp_path):
    store = ResultsStore(tmp_path)
    _claim(store, claimant(os.getppid()))
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "busy"
    assert f"pid {os.getppid()} on " in store.holder("k")
    store.close()


def test_claim_from_another_host_is_live_while_its_heartbeat_is_fresh(tmp_path):
    store = ResultsStore(tmp_path)
    _claim(store, "elsewhere|boot|4242|99", heartbeat=time.time())
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r2") == "busy"
    store._conn.execute("UPDATE cells SET heartbeat=? WHERE cell_key='k'", (time.time() - STALE_AFTER_S - 1,))
    assert store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r3") == "claimed"
    store.close()


def test_heartbeat_refreshes_this_process_claim(tmp_path):
    store = ResultsStore(tmp_path)
    store.claim_cell(CellIdentity("k", "s", "m", "d", 0), "r1")
    store._conn.execute("UPDATE cells SET heartbeat=0 WHERE cell_key='k'")
    with store.heartbeat("k", every=0.05):
        time.sleep(0.4)
    assert time.time() - store.cell_status("k")["heartbeat"] < 5
    store.close()


def test_cell_busy_in_another_process_is_reported_with_exit_code_75(run_bench, write_suite, tmp_path, bench_env):
    path = write_suite(toy_suite(metrics=["toy-mae"]))
    assert run_bench("run", str(path), "--no-report", "--only", "nothing*").returncode == 2  # matches no cell
    first = run_bench("run", str(path), "--no-report")
    assert first.returncode == 0, first.stderr
    db = tmp_path / "reports" / "toy" / "results.sqlite"
    # Make the model cell look as if a live process (a sleeper we start) were running it.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        con = sqlite3.connect(db)
        con.execute(
            "UPDATE cells SET status='running', claimant=?, pid=? WHERE kind='model'",
            (claimant(sleeper.pid), sleeper.pid),
        )
        con.commit()
        con.close()
        again = run_bench("run", str(path), "--no-report")
        assert again.returncode == 75, again.stdout + again.stderr
        assert f"left undone, run by pid {sleeper.pid}" in again.stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once that process is gone, the cell is taken over and finished.
    final = run_bench("run", str(path), "--no-report")
    assert final.returncode == 0, final.stdout + final.stderr
