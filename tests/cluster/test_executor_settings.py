"""The suite's `executor:` section, its command-line overrides, and how cells are split into jobs."""

from __future__ import annotations

import pytest
import yaml
from toy_suites import toy_suite

from bench_core.api import BenchError
from bench_core.executors import plan_units, settings_for
from bench_core.suite import load_suite


def _suite(tmp_path, **executor):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(toy_suite(executor=executor) if executor else toy_suite()))
    return path


def test_executor_section_is_strict_with_key_paths(tmp_path):
    with pytest.raises(BenchError) as err:
        load_suite(_suite(tmp_path, kind="slurm", partion="gpu"))
    assert "executor.partion: unknown key; did you mean 'partition'?" in str(err.value)
    with pytest.raises(BenchError, match=r"executor.kind: Input should be 'inline', 'local' or 'slurm'"):
        load_suite(_suite(tmp_path, kind="pbs"))
    with pytest.raises(BenchError, match=r"gpus_per_cell \(3\) must be a multiple of nodes \(2\)"):
        load_suite(_suite(tmp_path, gpus_per_cell=3, nodes=2))
    with pytest.raises(BenchError, match=r"executor.time_min: Input should be a valid integer"):
        load_suite(_suite(tmp_path, time_min="1h"))


def test_command_line_overrides_the_suite(tmp_path):
    suite = load_suite(_suite(tmp_path, kind="slurm", partition="gpu", time_min=600, setup=["module load cuda"]))
    settings = settings_for(suite, "local", ["time_min=30", "max_parallel=2", "sbatch={constraint: a100}"])
    assert (settings.kind, settings.partition, settings.time_min, settings.max_parallel) == ("local", "gpu", 30, 2)
    assert settings.setup == ["module load cuda"] and settings.sbatch == {"constraint": "a100"}
    assert settings_for(load_suite(_suite(tmp_path))).kind == "inline"
    with pytest.raises(BenchError) as err:
        settings_for(suite, None, ["max_paralel=2"])
    assert "executor.max_paralel: unknown key; did you mean 'max_parallel'?" in str(err.value)
    with pytest.raises(BenchError, match=r"executor.max_parallel: Input should be a valid integer.*'two'"):
        settings_for(suite, None, ["max_parallel=two"])
    with pytest.raises(BenchError, match="is not KEY=VALUE"):
        settings_for(suite, None, ["partition"])


def test_usage_errors_exit_2_before_anything_runs(bench, bench_env, suite_file):
    path = suite_file()
    done = bench("run", str(path), "--detach", env=bench_env)
    assert done.returncode == 2 and "--detach needs cells that run elsewhere" in done.stderr
    done = bench("run", str(path), "--executor", "local", "--nproc", "2", env=bench_env)
    assert done.returncode == 2 and "--nproc is for inline runs" in done.stderr


def test_each_pending_baseline_goes_to_one_job(tmp_path, bench_env, monkeypatch):
    from bench_core.plugins import load_registry
    from bench_core.runner import Console, Runner, plan

    monkeypatch.setenv("BENCH_CACHE_DIR", bench_env["BENCH_CACHE_DIR"])
    suite = load_suite(_seeds(tmp_path, 3))
    registry = load_registry(only=["fakeplugins"])
    runner = Runner(suite, registry, output_dir=tmp_path / "out", console=Console(progress=False))
    cells = plan(suite)
    keys = [runner.cell_key(c) for c in cells]
    (baseline,) = [runner.cell_key(b) for b in runner.baseline_cells(cells)]
    units = plan_units(runner, cells, settled=set(), busy=set())
    assert [u.key for u in units] == keys
    assert [[m.key for m in u.members] for u in units] == [[keys[0], baseline], [keys[1]], [keys[2]]]
    assert [u.skips for u in units] == [(), (baseline,), (baseline,)]
    # Every model cell finished but the baseline failed: one job runs only the baseline, skipping its model cell.
    (unit,) = plan_units(runner, cells, settled=set(keys), busy=set())
    assert ([m.key for m in unit.members], unit.skips, unit.cell_id) == ([baseline], (keys[0],), cells[0].id)
    # A baseline already in a queued job is not handed out again.
    assert [u.skips for u in plan_units(runner, cells[1:], settled=set(), busy={keys[0], baseline})] == [
        (baseline,), (baseline,)]  # fmt: skip


def _seeds(tmp_path, n):
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(toy_suite(seeds=list(range(n)))))
    return path
