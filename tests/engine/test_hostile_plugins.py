"""Faults injected by hostile plugins, and by a hostile file in the working folder (issue #14).

Each test is named after the fault it injects. A plugin may raise anything, ``SystemExit``
included, while importing, registering or observing; bench records it against that plugin
and carries on. Only Ctrl-C (``KeyboardInterrupt``) still stops it.
"""

import html
import json
import os
import sqlite3
import sys
import textwrap
import types

import pytest
from test_plugins import MODEL_PLUGIN, make_dist
from toy_suites import toy_suite

from bench_core import hookimpl
from bench_core.cli import main
from bench_core.plugins import load_registry
from bench_core.provenance import usable_cores

# A small run: one cell, few steps, one paired metric, few test items.
SMALL = {
    "models": [{"plugin": "toy-ae", "budget": {"steps": 4}}],
    "metrics": ["toy-mae"],
    "evaluation": {"batch_size": 4, "max_items": 4, "grid_size": 2, "n_samples": 2},
}

# An observer that behaves: appends each call as a JSON line to a file in the test's folder.
GOOD_OBSERVER = """
    import json

    from bench_core import hookimpl

    def _log(hook, **data):
        with open({log!r}, "a") as f:
            f.write(json.dumps({{"hook": hook, **data}}, default=str) + "\\n")

    @hookimpl
    def bench_run_start(suite, output_dir):
        _log("run_start")

    @hookimpl
    def bench_result_written(row):
        _log("result_written", metric=row["metric"], task=row["task"])

    @hookimpl
    def bench_run_end(suite, output_dir, summary):
        _log("run_end", summary=summary)

    @hookimpl
    def bench_report_sections(store_path):
        return [{{"title": "Good observer", "html": "<p>good observer section</p>"}}]
"""


def observer_module(name: str, **hooks) -> types.ModuleType:
    """A plugin module implementing the given lifecycle hooks (keyword: hook name)."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


@pytest.fixture
def hostile_run(run_bench, bench_env, write_suite, tmp_path):
    """Run a small suite with the fake plugins, a good observer and the plugin modules given as source."""
    plugin_dir = tmp_path / "plugin_modules"
    plugin_dir.mkdir()
    log = tmp_path / "good_observer.jsonl"
    (plugin_dir / "good_observer.py").write_text(textwrap.dedent(GOOD_OBSERVER.format(log=str(log))))
    env = {**bench_env, "PYTHONPATH": os.pathsep.join([str(plugin_dir), bench_env["PYTHONPATH"]])}

    def run(modules: dict[str, str], *args: str):
        for name, body in modules.items():
            (plugin_dir / f"{name}.py").write_text("from bench_core import hookimpl\n" + textwrap.dedent(body))
        loads = [arg for name in ["good_observer", *modules] for arg in ("-p", name)]
        suite = write_suite(toy_suite(**SMALL))
        result = run_bench(*loads, "run", str(suite), "--no-progress", *args, env=env)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls, tmp_path / "reports" / "toy"

    return run


def query(out_dir, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the run's results store."""
    con = sqlite3.connect(out_dir / "results.sqlite")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored_rows(out_dir) -> int:
    return query(out_dir, "SELECT COUNT(*) FROM results")[0][0]


# -- faults while loading ----------------------------------------------------------------------
def test_plugin_calling_sys_exit_at_import_is_listed_not_fatal(tmp_path, monkeypatch, capsys, write_suite):
    make_dist(tmp_path, "exiting_plugin", "exiting_mod", "exiting", "import sys\nsys.exit(3)\n")
    make_dist(tmp_path, "extra_models", "extra_models_plugin", "extra", MODEL_PLUGIN.format(name="extra-net"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "exiting_plugin 0.1  exiting = exiting_mod" in out
    assert "ERROR: called sys.exit(3) while importing (" in out and "exiting_mod.py:2)" in out
    assert "model extra-net" in out and "model vqvae" in out  # the others still load
    # A run that does not use it goes ahead (the dry run loads and checks every plugin it names) ...
    assert main(["-p", "fakeplugins", "run", str(write_suite(toy_suite(**SMALL))), "--dry-run"]) == 0
    # ... and one that names it gets the error.
    assert main(["run", str(write_suite(toy_suite(models=[{"plugin": "exiting"}]))), "--dry-run"]) == 2
    assert "model plugin 'exiting' failed to load: called sys.exit(3) while importing" in capsys.readouterr().err


def test_registration_hooks_calling_sys_exit_or_raising_are_listed_not_fatal(tmp_path, monkeypatch):
    hooks = {
        "models": "import sys\n\n@hookimpl\ndef bench_models():\n    sys.exit('no GPU here')\n",
        "metrics": "@hookimpl\ndef bench_metrics():\n    raise RuntimeError('metric table broke')\n",
        "datasets": "@hookimpl\ndef bench_datasets():\n    return 'toy'\n",
    }
    for kind, body in hooks.items():
        make_dist(tmp_path, f"bad_{kind}", f"bad_{kind}_mod", f"bad-{kind}", "from bench_core import hookimpl\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    errors = {s.entry_point: s.error for s in load_registry().sources if s.error}
    assert errors["bad-models"].startswith("called sys.exit('no GPU here') while calling bench_models() (")
    assert errors["bad-metrics"].startswith("RuntimeError: metric table broke while calling bench_metrics() (")
    assert errors["bad-datasets"] == "bench_datasets() returned str, not a list of classes"
    assert "psnr" in load_registry().names("metric")  # the others still load


def test_plugin_raising_keyboard_interrupt_at_import_still_stops(tmp_path, monkeypatch):
    make_dist(tmp_path, "interrupting", "interrupting_mod", "interrupting", "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        load_registry()


# -- faults while observing --------------------------------------------------------------------
def test_raising_observer_is_reported_once_disabled_and_the_others_still_called(monkeypatch, caplog):
    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    seen, bad_calls, bad_ends = [], [], []

    def boom(row):
        bad_calls.append(row)
        raise RuntimeError("observer broke")

    good = observer_module("good_observer", bench_result_written=lambda row: seen.append(row["value"]))
    bad = observer_module(
        "bad_observer",
        bench_result_written=boom,
        bench_run_end=lambda suite, output_dir, summary: bad_ends.append(summary),
    )
    registry = load_registry(extra_modules=[good, bad])
    for value in range(3):
        assert registry.notify("bench_result_written", row={"value": value}) == []
    assert seen == [0, 1, 2] and len(bad_calls) == 1  # called until it failed, never again
    (error,) = registry.observer_errors
    assert error.startswith("plugin (direct):bad_observer (bad_observer): RuntimeError: observer broke while ")
    assert "calling bench_result_written() (" in error
    assert "not called for bench_result_written again" in error and "BENCH_DISABLE_PLUGIN_AUTOLOAD=1" in error
    assert [r.getMessage() for r in caplog.records] == [f"warning: {error}"]
    registry.notify("bench_run_end", suite=None, output_dir="out", summary={"done": 1})
    assert bad_ends == [{"done": 1}]  # its other hooks still run


def test_observer_raising_keyboard_interrupt_still_stops(monkeypatch):
    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")

    def interrupt(row):
        raise KeyboardInterrupt

    registry = load_registry(extra_modules=[observer_module("ctrl_c", bench_result_written=interrupt)])
    with pytest.raises(KeyboardInterrupt):
        registry.notify("bench_result_written", row={})
    assert registry.observer_errors == []


def test_raising_result_written_hook_is_reported_once_and_rows_kept(hostile_run):
    bad = """
        @hookimpl
        def bench_result_written(row):
            raise RuntimeError("cannot write the row elsewhere")
    """
    result, calls, out_dir = hostile_run({"bad_written": bad}, "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("RuntimeError: cannot write the row elsewhere while calling bench_result_written()") == 1
    assert "plugin (-p):bad_written (bad_written)" in result.stderr
    written = [c for c in calls if c["hook"] == "result_written"]
    assert len(written) == stored_rows(out_dir) > 1  # every row stored, and every row seen by the good observer


def test_run_start_hook_calling_sys_exit_and_run_end_hook_raising_do_not_stop_run(hostile_run):
    bad = """
        import sys

        @hookimpl
        def bench_run_start(suite, output_dir):
            sys.exit(4)

        @hookimpl
        def bench_run_end(suite, output_dir, summary):
            raise ValueError("summary not understood")
    """
    result, calls, out_dir = hostile_run({"bad_lifecycle": bad}, "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "called sys.exit(4) while calling bench_run_start()" in result.stderr
    assert "ValueError: summary not understood while calling bench_run_end()" in result.stderr
    assert query(out_dir, "SELECT DISTINCT status FROM cells") == [("done",)] and stored_rows(out_dir) > 0
    assert [c["hook"] for c in calls if c["hook"] != "result_written"] == ["run_start", "run_end"]


def test_raising_or_malformed_report_sections_hook_does_not_stop_report(hostile_run):
    raising = """
        @hookimpl
        def bench_report_sections(store_path):
            raise OSError("plot server unreachable")
    """
    malformed = """
        @hookimpl
        def bench_report_sections(store_path):
            return {"title": "not in a list"}
    """
    result, _, out_dir = hostile_run({"bad_sections": raising, "odd_sections": malformed})
    assert result.returncode == 0, result.stdout + result.stderr
    page = html.unescape((out_dir / "index.html").read_text())
    assert "good observer section" in page  # the well-behaved plugin's section is rendered
    assert "Plugin hooks that failed" in page
    assert "plugin (-p):bad_sections (bad_sections): OSError: plot server unreachable while calling" in page
    assert "plugin (-p):odd_sections (odd_sections): bench_report_sections() returned {'title': 'not in" in page


# -- a hostile file in the working folder --------------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_nproc_launch_ignores_hostile_torch_py_in_cwd(bench_env, write_suite, tmp_path):
    import subprocess

    marker = tmp_path / "hostile_torch_ran"
    (tmp_path / "torch.py").write_text(
        f"import sys\nopen({str(marker)!r}, 'a').write(' '.join(sys.argv) + '\\n')\nsys.exit(7)\n"
    )
    # The engine chooses the threads: each of the 2 workers gets its share of the cores.
    env = {k: v for k, v in bench_env.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.pop("BENCH_THREADS_SET_BY_ENGINE", None)
    suite = write_suite(toy_suite(**SMALL))
    # `-P` stands in for the `bench` console script, whose sys.path[0] is its bin folder, not the
    # working directory: what is under test is what `--nproc` launches (torchrun and its workers).
    cmd = [sys.executable, "-P", "-m", "bench_core", "-p", "fakeplugins", "run", str(suite), "--nproc", "2"]
    result = subprocess.run(
        [*cmd, "--no-report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert not marker.exists(), f"the working folder's torch.py ran: {marker.read_text()}"
    assert result.returncode == 0, result.stdout + result.stderr
    out_dir = tmp_path / "reports" / "toy"
    assert stored_rows(out_dir) > 0
    env_record = json.loads(query(out_dir, "SELECT provenance FROM runs")[0][0])
    assert env_record["world_size"] == 2
    assert (env_record["torch_threads"], env_record["torch_threads_set_by"]) == (max(1, usable_cores() // 2), "engine")
    assert (env_record["omp_wait_policy"], env_record["omp_wait_policy_set_by"]) == ("PASSIVE", "engine")
