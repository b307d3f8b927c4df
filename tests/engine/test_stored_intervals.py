"""Bootstrap intervals over test items are stored beside mean and std, and old stores migrate."""

import json
import sqlite3

from toy_suites import toy_suite

from bench_core.stats import bootstrap_ci
from bench_core.store import SCHEMA_VERSION, ResultsStore


def test_per_item_interval_is_stored_with_the_row(run_bench, write_suite, tmp_path):
    done = run_bench("run", str(write_suite(toy_suite())), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "reports" / "toy"
    db = sqlite3.connect(out / "results.sqlite")
    value, lo, hi = db.execute(
        "SELECT value, ci_low, ci_high FROM results WHERE kind != 'baseline' AND task='recon' AND metric='toy-mae'"
    ).fetchone()
    per_file = json.loads((out / "cells" / "toy-ae__toy__seed0" / "eval.json").read_text())["recon"]["toy-mae"]
    assert (lo, hi) == bootstrap_ci(list(per_file["per_file"].values()))  # independent recomputation
    assert lo < value < hi
    # Distribution metrics have no items to resample.
    assert (
        db.execute("SELECT ci_low FROM results WHERE kind != 'baseline' AND metric='mean-gap'").fetchall()
        == [(None,)] * 2
    )


def test_schema_1_store_gains_the_interval_columns(tmp_path):
    path = tmp_path / "results.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE results (
            run_id TEXT NOT NULL, cell_key TEXT NOT NULL, suite TEXT NOT NULL,
            model TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
            task TEXT NOT NULL, metric TEXT NOT NULL,
            value REAL, std REAL, n INTEGER, higher_is_better INTEGER,
            settings TEXT NOT NULL, provenance TEXT NOT NULL, created REAL NOT NULL,
            UNIQUE (cell_key, task, metric)
        );
        INSERT INTO results VALUES ('r', 'k', 's', 'm', 'd', 0, 'recon', 'psnr', 30.0, 1.0, 4, 1, '{}', '{}', 0);
        """
    )
    old.commit()
    old.close()
    store = ResultsStore(path)
    (row,) = store.results()
    store.close()
    assert row["value"] == 30.0 and row["ci_low"] is None and row["ci_high"] is None
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)  # migrated to the current schema
