"""Plugin discovery through entry points: built-ins, throwaway distributions, broken and duplicate plugins."""

import subprocess
import sys
import textwrap
import time

import pytest

from bench_core.api import PluginError
from bench_core.plugins import load_registry


def make_dist(root, dist, module, entry, body, version="0.1"):
    """A minimal installed distribution on sys.path: a module plus dist-info with an entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[bench]\n{entry} = {module}\n")


MODEL_PLUGIN = """
    from bench_core import hookimpl
    from bench_core.api import API_VERSION

    class Extra:
        name = "{name}"
        version = "2.0"
        api_version = API_VERSION
        capabilities = frozenset({{"reconstruct"}})
        dims = frozenset({{2}})
        configs = {{"base": {{}}}}
        default_config = "base"

    @hookimpl
    def bench_models():
        return [Extra]
"""


def bench(args, env_extra, tmp_path, monkeypatch_env=None):
    import os

    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "bench_core", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def test_builtins_come_from_entry_points():
    registry = load_registry()
    assert "vqvae" in registry.names("model")
    assert {"psnr", "ssim"} <= set(registry.names("metric"))
    assert "hipmri" in registry.names("dataset")
    reg = registry.get("model", "vqvae")
    assert reg.source.distribution == "medgen-bench" and reg.source.entry_point == "vqvae"


def test_throwaway_distribution_broken_plugin_and_conflict(tmp_path):
    make_dist(tmp_path, "extra_models", "extra_models_plugin", "extra", MODEL_PLUGIN.format(name="extra-net"))
    make_dist(tmp_path, "other_models", "other_models_plugin", "other", MODEL_PLUGIN.format(name="extra-net"))
    make_dist(tmp_path, "broken_plugin", "broken_plugin_mod", "broken", "raise RuntimeError('boom at import')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listing = bench(["plugins"], env, tmp_path)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "extra_models 0.1  extra = extra_models_plugin" in out and "model extra-net" in out
    assert "broken = broken_plugin_mod" in out and "ERROR: RuntimeError: boom at import" in out
    assert "conflict: model 'extra-net' is provided by extra_models:extra, other_models:other" in out
    assert "model vqvae" in out  # the CLI still works and lists the built-ins

    sys.path.insert(0, str(tmp_path))
    try:
        registry = load_registry()
        with pytest.raises(PluginError) as err:
            registry.get("model", "extra-net")
        assert "extra_models" in str(err.value) and "other_models" in str(err.value)
        assert registry.get("model", "extra_models:extra-net").source.distribution == "extra_models"
        with pytest.raises(PluginError, match="failed to load: RuntimeError: boom at import"):
            registry.get("model", "broken")
    finally:
        sys.path.remove(str(tmp_path))


def test_autoload_disabled_loads_only_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = load_registry(only=["psnr"])
    assert registry.names("metric") == ["psnr"] and registry.names("model") == []
    empty = load_registry()
    assert empty.sources == []


def test_api_version_mismatch_is_reported(tmp_path):
    body = MODEL_PLUGIN.format(name="old-net").replace("api_version = API_VERSION", "api_version = 99")
    make_dist(tmp_path, "old_models", "old_models_plugin", "old", body)
    sys.path.insert(0, str(tmp_path))
    try:
        registry = load_registry()
        source = next(s for s in registry.sources if s.entry_point == "old")
        assert "targets plugin API v99" in source.error
        assert "old-net" not in registry.names("model")
    finally:
        sys.path.remove(str(tmp_path))


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, runpy\nsys.argv = ['bench', '--help']\n"
        "try:\n    runpy.run_module('bench_core', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert "usage: bench" in result.stdout and result.stdout.strip().endswith("NO-TORCH")
    print(f"bench --help took {elapsed:.3f} s")  # shown with -s; the speed target lives in the benchmarks


def test_same_entry_point_name_in_two_distributions_both_load(tmp_path):
    make_dist(tmp_path, "first_dist", "first_mod", "net", MODEL_PLUGIN.format(name="net-a"))
    make_dist(tmp_path, "second_dist", "second_mod", "net", MODEL_PLUGIN.format(name="net-b"))
    sys.path.insert(0, str(tmp_path))
    try:
        registry = load_registry()
        assert registry.get("model", "net-a").source.distribution == "first_dist"
        assert registry.get("model", "net-b").source.distribution == "second_dist"
    finally:
        sys.path.remove(str(tmp_path))


def test_refused_class_is_named_when_its_name_is_asked_for(tmp_path):
    body = MODEL_PLUGIN.format(name="future-net").replace("api_version = API_VERSION", "api_version = 2")
    make_dist(tmp_path, "future_models", "future_mod", "future", body)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(PluginError, match=r"unknown model plugin 'future-net'.*future_models:future .*API v2"):
            load_registry().get("model", "future-net")
    finally:
        sys.path.remove(str(tmp_path))


def test_tied_weights_save_and_load(tmp_path):
    import torch

    from bench_core.checkpoints import load_weights, save_weights

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied (5 x 3 both)
    save_weights(model, tmp_path, {})
    fresh = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    load_weights(fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh[0].weight, model[0].weight) and fresh[1].weight is fresh[0].weight
