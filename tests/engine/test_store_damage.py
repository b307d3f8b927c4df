"""Damaged files in an output directory: clear errors (exit 2), and `bench doctor` finds and repairs them.

Each test injects the fault it is named after, most into a copy of one tiny finished run.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from toy_suites import toy_suite

from bench_core.doctor import diagnose
from bench_core.store import CellIdentity, ResultsStore

HERE = Path(__file__).parent
KEEP = 32768  # bytes a truncated store keeps, as in `truncate -s 32768 OUT/results.sqlite`


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A folder holding suite.yaml, its embedded-data cache and the finished run under reports/toy."""
    base = tmp_path_factory.mktemp("finished")
    (base / "suite.yaml").write_text(yaml.safe_dump(toy_suite(), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env["BENCH_CACHE_DIR"] = str(base / "cache")
    subprocess.run(
        [sys.executable, "-m", "bench_core", "-p", "fakeplugins", "run", "suite.yaml", "--no-report"],
        cwd=base, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return base


@pytest.fixture
def out(finished_run, tmp_path) -> Path:
    """A private copy of the finished run in tmp_path (the cwd and cache of `run_bench`); its output dir."""
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    return tmp_path / "reports" / "toy"


def truncate_store(out: Path) -> Path:
    store = out / "results.sqlite"
    assert store.stat().st_size > KEEP, "the store must be larger than what the truncation keeps"
    os.truncate(store, KEEP)
    return store


def stored(out: Path, table: str, where: str = "1") -> list[dict]:
    with closing(sqlite3.connect(out / "results.sqlite")) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(f"SELECT * FROM {table} WHERE {where}")]


def toy_cells(out: Path) -> list[dict]:
    return stored(out, "cells", "model='toy-ae'")


def assert_names_damaged_store(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "results store reports/toy/results.sqlite is damaged" in proc.stderr
    assert "bench doctor reports/toy" in proc.stderr and "move it aside" in proc.stderr


def test_truncated_store_report_names_file_and_exits_2(out, run_bench):
    truncate_store(out)
    proc = run_bench("report", "reports/toy")
    assert_names_damaged_store(proc)
    assert "database disk image is malformed" in proc.stderr


def test_store_overwritten_with_garbage_report_exits_2(out, run_bench):
    (out / "results.sqlite").write_bytes(os.urandom(KEEP))
    proc = run_bench("report", "reports/toy")
    assert_names_damaged_store(proc)
    assert "file is not a database" in proc.stderr


def test_truncated_store_run_exits_2_and_leaves_store_as_is(out, run_bench):
    store = truncate_store(out)
    proc = run_bench("run", "suite.yaml", "--no-report")
    assert_names_damaged_store(proc)
    assert store.stat().st_size == KEEP  # not rewritten: what remains is there for `bench doctor --repair`


def test_garbage_wal_and_shm_files_are_ignored_by_doctor_and_the_store(out):
    # SQLite discards WAL frames whose checksums do not match and rebuilds a bad -shm index.
    for side in ("results.sqlite-wal", "results.sqlite-shm"):
        (out / side).write_bytes(os.urandom(40000))
    assert diagnose(out).exit_code == 0
    store = ResultsStore(out)
    try:
        assert store.results() and store.cells()
    finally:
        store.close()


def test_doctor_healthy_output_dir_exit_0(out, run_bench):
    proc = run_bench("doctor", "reports/toy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("checked the results store, 1 weight files, 0 training states, ")
    assert proc.stdout.endswith("eval files: no damaged\n")


def test_doctor_finds_truncated_checkpoint(out, run_bench):
    (weights,) = out.glob("checkpoints/*/model.safetensors")
    os.truncate(weights, weights.stat().st_size // 2)
    proc = run_bench("doctor", "reports/toy")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"weights reports/toy/checkpoints/{weights.parent.name}/model.safetensors: truncated" in proc.stdout
    assert "bench doctor --repair reports/toy" in proc.stdout
    assert weights.exists()  # a check alone moves nothing

    repaired = diagnose(out, repair=True)
    assert repaired.exit_code == 0
    assert "moved aside to model.safetensors.damaged-" in repaired.format()
    assert not weights.exists() and len(list(weights.parent.glob("model.safetensors.damaged-*"))) == 1
    assert diagnose(out).findings == []


def test_doctor_finds_corrupt_training_state(out):
    (ckdir,) = out.glob("checkpoints/*")
    state = ckdir / "00-train_state.pt"
    state.write_bytes(b"PK\x03\x04 not a torch file")
    (finding,) = diagnose(out).findings
    assert (finding.kind, finding.path) == ("training state", state)
    assert "cannot be loaded with weights_only=True" in finding.problem

    diagnose(out, repair=True)
    assert not state.exists() and len(list(ckdir.glob("00-train_state.pt.damaged-*"))) == 1


def test_doctor_finds_eval_json_that_is_not_a_dict_and_repair_marks_its_cell(out):
    eval_file = out / "cells" / "toy-ae__toy__seed0" / "eval.json"
    eval_file.write_text("[1, 2]")
    (finding,) = diagnose(out).findings
    assert (finding.kind, finding.path) == ("eval file", eval_file)
    assert finding.problem == "a JSON list, expected an object of tasks"

    assert "its cell is marked for re-evaluation" in diagnose(out, repair=True).format()
    assert not eval_file.exists()
    (cell,) = toy_cells(out)
    assert cell["status"] == "failed" and "eval.json was damaged" in cell["reason"]


def test_doctor_repair_moves_store_aside_and_rerun_reevaluates_without_training(out, run_bench):
    truncate_store(out)
    assert diagnose(out).exit_code == 1
    repair = run_bench("doctor", "--repair", "reports/toy")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    (aside,) = out.glob("results.sqlite.damaged-*[0-9]")
    assert aside.stat().st_size == KEEP  # moved, not changed
    assert "next: `bench run reports/toy/suite.yaml --output reports/toy`" in repair.stdout

    rerun = run_bench("run", "reports/toy/suite.yaml", "--output", "reports/toy", "--no-report")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (cell,) = toy_cells(out)
    assert cell["status"] == "done"
    assert json.loads(cell["details"])["weights"].startswith("checkpoint store ")  # evaluated, not retrained
    assert stored(out, "results", f"cell_key='{cell['cell_key']}' AND task='recon'")


def test_doctor_repair_salvages_readable_rows_of_truncated_store(tmp_path):
    store = ResultsStore(tmp_path)
    for run in ("r1", "r2", "r3"):
        store.start_run(run, "s", "h", [], {})
    for i in range(20):
        store.claim_cell(CellIdentity(f"k{i}", "s", f"m{i}", "d", 0), "r3")
    for i in range(20):
        rows = [{"task": "recon", "metric": f"metric{j}", "value": float(j), "settings": {"pad": "x" * 200},
                 "provenance": {}} for j in range(10)]  # fmt: skip
        store.finish_cell(f"k{i}", "done", None, {}, rows)
    store.close()
    path = tmp_path / "results.sqlite"
    os.truncate(path, path.stat().st_size * 2 // 3 // 4096 * 4096)

    (finding,) = diagnose(tmp_path, repair=True).findings
    assert "copied 3 runs rows" in finding.action and "(the rest was unreadable)" in finding.action
    assert [r["run_id"] for r in stored(tmp_path, "runs")] == ["r1", "r2", "r3"]
    assert 0 < len(stored(tmp_path, "results")) < 200
    finished = stored(tmp_path, "cells", "status != 'running'")
    assert finished and all(c["status"] == "failed" and "re-run" in c["reason"] for c in finished)


def test_doctor_repair_of_store_overwritten_with_garbage_says_nothing_could_be_read(out):
    (out / "results.sqlite").write_bytes(os.urandom(KEEP))
    (finding,) = diagnose(out, repair=True).findings
    assert "file is not a database" in finding.problem
    assert "nothing could be read from it; a fresh empty store replaces it" in finding.action
    assert stored(out, "cells") == []
