"""`bench run` end to end through the CLI, on the fake plugins, in a temp dir."""

import json
import sqlite3

from toy_suites import toy_suite


def rows(out_dir):
    """The models' result rows and cells (baselines have tests of their own)."""
    con = sqlite3.connect(out_dir / "results.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM results WHERE kind != 'baseline'")], [
            dict(r) for r in con.execute("SELECT * FROM cells WHERE kind = 'model'")
        ]
    finally:
        con.close()


def test_run_report_and_rerun_keeps_finished_cells(run_bench, write_suite, tmp_path):
    suite = toy_suite(
        models=[
            {"plugin": "toy-ae", "budget": {"steps": 12}},
            {"plugin": "toy-ae", "id": "diverges", "params": {"nan_loss": True}},
            {"plugin": "toy-3d"},
        ],
        datasets=[{"plugin": "toy", "root": "embedded"}, {"plugin": "toy", "id": "toy-paired", "root": "embedded",
                                                            "options": {"paired": True}}],
    )  # fmt: skip
    path = write_suite(suite)
    first = run_bench("run", str(path))
    assert first.returncode == 1, first.stderr  # one model diverges: exit code says some failed
    out = tmp_path / "reports" / "toy"
    results, cells = rows(out)
    status = {(c["model"], c["dataset"]): (c["status"], c["reason"]) for c in cells}
    assert status[("toy-ae", "toy")][0] == "done"
    assert status[("toy-ae", "toy-paired")][0] == "done"
    assert status[("diverges", "toy")][0] == "failed"
    assert "consecutive updates skipped" in status[("diverges", "toy")][1]
    assert status[("toy-3d", "toy")] == ("skipped", "toy-3d handles [3]D data; toy is 2D")
    tasks = {(r["model"], r["dataset"], r["task"], r["metric"]) for r in results}
    assert ("toy-ae", "toy", "recon", "toy-mae") in tasks
    assert ("toy-ae", "toy", "sample", "mean-gap") in tasks  # distribution metric on samples
    assert ("toy-ae", "toy", "sample", "toy-mae") not in tasks  # paired metric has no partner for samples
    for task in ("A2A", "B2B", "A2B", "B2A"):
        assert ("toy-ae", "toy-paired", task, "toy-mae") in tasks
    assert ("toy-ae", "toy", "train", "ae.images_per_s") in tasks
    assert ("toy-ae", "toy", "train", "ae.peak_memory_mb") in tasks
    assert ("toy-ae", "toy", "model", "pid") in tasks
    mae = next(
        r
        for r in results
        if (r["model"], r["dataset"], r["task"], r["metric"]) == ("toy-ae", "toy", "recon", "toy-mae")
    )
    assert mae["n"] == 12 and 0 <= mae["value"] < 1
    provenance = json.loads(mae["provenance"])
    assert provenance["suite_hash"] and provenance["device"] == "cpu" and "packages" in provenance
    # Per-task image folders named like the inputs, per-file values in the eval JSON, grids.
    cell_dir = out / "cells" / "toy-ae__toy__seed0"
    assert sorted(p.name for p in (cell_dir / "gt").iterdir())[:2] == ["item_000.png", "item_001.png"]
    assert len(list((cell_dir / "recon").iterdir())) == 12
    assert (cell_dir / "recon_grid.png").exists() and (cell_dir / "sample_grid.png").exists()
    assert len(list((cell_dir / "sample").iterdir())) == 6  # evaluation.n_samples caps the draws
    paired_dir = out / "cells" / "toy-ae__toy-paired__seed0"
    assert {p.name for p in paired_dir.iterdir()} >= {"gtA", "gtB", "A2A", "B2B", "A2B", "B2A", "eval.json"}
    evaluation = json.loads((cell_dir / "eval.json").read_text())
    assert len(evaluation["recon"]["toy-mae"]["per_file"]) == 12
    html = (out / "index.html").read_text()
    assert "toy-ae" in html and "consecutive updates skipped" in html and "toy-3d handles" in html

    second = run_bench("run", str(path))
    assert "finished in an earlier run" in second.stdout
    results2, cells2 = rows(out)
    assert len(results2) == len(results)  # nothing redone or duplicated
    assert [c for c in cells2 if c["model"] == "diverges"][0]["status"] == "failed"  # failed cells are retried


def test_dry_run_and_only(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite(seeds=[0, 1], compile=True))
    dry = run_bench("run", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 cells" in dry.stdout and "toy-ae/toy/seed1" in dry.stdout
    assert not (tmp_path / "reports").exists()
    only = run_bench("run", str(path), "--only", "*/seed1")
    assert only.returncode == 0, only.stderr
    _, cells = rows(tmp_path / "reports" / "toy")
    assert [c["seed"] for c in cells] == [1]
    # compile is a CUDA option: on CPU the cell says it was not applied instead of silently ignoring it.
    assert json.loads(cells[0]["details"])["compile"].startswith("not applied: torch.compile is a CUDA option")


def test_missing_dataset_root_stops_before_work(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite(datasets=[{"plugin": "toy", "root": "data/TOY"}]))
    result = run_bench("run", str(path))
    assert result.returncode == 2
    assert "datasets[toy].root: data folder 'data/TOY' does not exist" in result.stderr
    assert "bench data make toy" in result.stderr  # the plugin's hint on how to obtain the data
    assert not (tmp_path / "reports").exists()


def test_unknown_plugin_lists_installed(run_bench, write_suite):
    path = write_suite(toy_suite(models=[{"plugin": "toy-vae"}]))
    result = run_bench("run", str(path))
    assert result.returncode == 2
    assert "unknown model plugin 'toy-vae'; installed models:" in result.stderr and "toy-ae" in result.stderr


def test_bad_model_param_named(run_bench, write_suite):
    path = write_suite(toy_suite(models=[{"plugin": "toy-ae", "params": {"widht": 4}}]))
    result = run_bench("run", str(path))
    assert result.returncode == 2
    assert "unknown config key 'widht'" in result.stderr and "width" in result.stderr


def test_export_formats_and_report_rebuild(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite())
    assert run_bench("run", str(path)).returncode == 0
    out = tmp_path / "reports" / "toy"
    (out / "index.html").unlink()
    rebuilt = run_bench("report", str(out))
    assert rebuilt.returncode == 0 and (out / "index.html").exists()
    md = run_bench("export", str(out), "--format", "markdown")
    assert "### toy / recon" in md.stdout and "| toy-ae |" in md.stdout and "toy-mae ↓" in md.stdout
    tex = run_bench("export", str(out), "--format", "latex")
    assert "\\begin{tabular}" in tex.stdout and "\\textbf{" in tex.stdout
    for fmt in ("csv", "json", "parquet"):
        result = run_bench("export", str(out), "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert (out / f"results.{fmt}").stat().st_size > 0
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert set(frame["metric"]) >= {"toy-mae", "mean-gap"}
    missing = run_bench("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no results store" in missing.stderr


def test_checkpoint_store_and_load_path(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite())
    assert run_bench("run", str(path), "--no-report").returncode == 0
    out = tmp_path / "reports" / "toy"
    (out / "results.sqlite").unlink()  # results lost, weights kept: the second run must not train
    for extra in ("results.sqlite-wal", "results.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    again = run_bench("run", str(path), "--no-report")
    assert again.returncode == 0, again.stderr
    _, cells = rows(out)
    details = json.loads(cells[0]["details"])
    assert details["weights"].startswith("checkpoint store") and details["stages"] == []

    weights = next(out.glob("checkpoints/*/model.safetensors"))
    loaded = write_suite(toy_suite(name="toy-loaded", models=[{"plugin": "toy-ae", "load": str(weights)}]), "l.yaml")
    result = run_bench("run", str(loaded), "--no-report")
    assert result.returncode == 0, result.stderr
    _, cells = rows(tmp_path / "reports" / "toy-loaded")
    assert json.loads(cells[0]["details"])["weights"] == f"loaded from {weights}"

    mismatched = write_suite(
        toy_suite(name="toy-bad", models=[{"plugin": "toy-ae", "params": {"width": 4}, "load": str(weights)}]), "b.yaml"
    )
    bad = run_bench("run", str(mismatched), "--no-report")
    assert bad.returncode == 1
    _, cells = rows(tmp_path / "reports" / "toy-bad")
    assert cells[0]["status"] == "failed" and "does not match the model" in cells[0]["reason"]


def test_requires_fails_before_any_work(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite(requires=["medgen-bench>=0.1", "no-such-plugins>=1.2", "pluggy>=99"]))
    result = run_bench("run", str(path))
    assert result.returncode == 2
    assert "requires: no-such-plugins is not installed (pip install 'no-such-plugins>=1.2')" in result.stderr
    assert "pluggy" in result.stderr and "the suite needs pluggy>=99" in result.stderr
    assert "medgen-bench" not in result.stderr.split("cannot run this suite")[1]
    assert not (tmp_path / "reports").exists()
    bad = write_suite(toy_suite(requires=["not a requirement!"]), "bad.yaml")
    invalid = run_bench("run", str(bad))
    assert invalid.returncode == 2 and "requires[0]" not in invalid.stderr and "requires" in invalid.stderr


def test_plugins_listing_and_trace(run_bench):
    listing = run_bench("plugins", "--trace")
    assert listing.returncode == 0, listing.stderr
    assert "plugin API v1" in listing.stdout
    assert "fakeplugins" in listing.stdout and "model toy-ae, model toy-3d" in listing.stdout
    assert "bench_models" in listing.stdout  # hook calls traced
