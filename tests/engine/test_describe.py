"""``bench plugins --details NAME`` / ``--json``: descriptions read from the plugin classes, checked against them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from typing import Any

import pytest

from bench_core import hookimpl
from bench_core.api import API_VERSION, PluginError
from bench_core.describe import FROM_THE_DATA, describe, find, format_description, render
from bench_core.plugins import load_registry
from bench_plugins.datasets.folder import Folder
from bench_plugins.datasets.hipmri import HipMRI
from bench_plugins.metrics.psnr import DEFAULT_MAX_DB, PSNR
from bench_plugins.models.vqvae import VQVAE


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """Only the built-ins these tests describe (fewer imports), plus hand-made plugins in a module."""
    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    return load_registry(only=["vqvae", "folder", "hipmri", "psnr"], extra_modules=[_fake_module()])


class _BaseMetric:
    def __init__(self, data_range: float = 1.0, dims: int = 2, window: int = 7, weights: str | None = None) -> None:
        self.window = window


class ForwardingMetric(_BaseMetric):
    """A metric whose options are partly
    its base class's.

    A second paragraph, not in the summary.
    """

    name = "forwarding"
    version = "3.1"
    api_version = API_VERSION
    higher_is_better = None
    kind = "distribution"
    dims = frozenset({3})
    needs_train = True

    def __init__(self, data_range: float = 1.0, dims: int = 2, threshold: float = 0.5, **options: Any) -> None:
        super().__init__(data_range, dims, **options)


class DeclaredDataset:
    """A dataset whose modalities and value range do not depend on its data."""

    name = "declared"
    version = "1.0"
    api_version = API_VERSION
    modalities = ("A", "B")
    value_range = (-1.0, 1.0)

    def __init__(self, root: Any, level: int, mode: str = "fast") -> None:
        self.level = level


def _fake_module() -> types.ModuleType:
    module = types.ModuleType("describe_fakes")
    module.bench_metrics = hookimpl(lambda: [ForwardingMetric])
    module.bench_datasets = hookimpl(lambda: [DeclaredDataset])
    return module


def test_model_configs_capabilities_tasks_and_dims(registry) -> None:
    [desc] = [describe(e) for e in find(registry, "vqvae")]
    assert desc["type"] == "model" and desc["name"] == "vqvae" and desc["version"] == VQVAE.version
    assert desc["configs"] == json.loads(json.dumps({n: dict(c) for n, c in VQVAE.configs.items()}))
    assert desc["default_config"] == VQVAE.default_config and desc["dims"] == [2]
    assert desc["capabilities"] == ["reconstruct"]
    assert desc["provider"]["entry_point"] == "vqvae = bench_plugins.models.vqvae"
    assert desc["tasks"] == {
        "2D one modality (32x32)": ["recon"],
        "2D pair A/B (32x32)": "not served: vqvae reconstructs single-modality data; dataset is paired (A, B)",
        "3D one modality (16x16x16)": "not served: vqvae handles 2D data",
    }
    text = format_description(desc)
    assert text.startswith(f"model vqvae {VQVAE.version} (plugin API v{API_VERSION})\n  Single-level VQ-VAE")
    assert "  configs (default: seed003-hipmri):\n    seed003-hipmri:\n      hidden: 128\n" in text
    assert "\n    tiny:\n" in text and '      quantizer: "ema"\n' in text


def test_dataset_options_embedded_data_and_what_it_yields(registry) -> None:
    folder, hipmri, declared = (describe(find(registry, n)[0]) for n in ("folder", "hipmri", "declared"))
    assert folder["options"] == {
        "modalities": {"default": None, "type": "Mapping[str, Any] | Sequence[str] | None"},
        "size": {"default": None, "type": "Sequence[int] | None"},
        "fit": {"default": "resize", "type": "str"},
        "val_fraction": {"default": None, "type": "float | None"},
        "seed": {"default": 0, "type": "int"},
        "keep_ranges": {"default": False, "type": "bool"},
    }
    assert folder["embedded"] == {"available": True, "defaults": {"n": 64, "seed": 0}}
    assert folder["obtain"] == Folder.obtain
    assert folder["data"] == {"modalities": FROM_THE_DATA, "value_range": FROM_THE_DATA, "dims": FROM_THE_DATA}
    assert hipmri["embedded"] == {"available": True, "defaults": {"n": 64, "seed": 0}}
    assert hipmri["obtain"] == HipMRI.obtain and list(hipmri["options"]) == ["size", "normalize"]
    assert declared["options"] == {"level": {"type": "int"}, "mode": {"default": "fast", "type": "str"}}
    assert declared["data"] == {"modalities": ["A", "B"], "value_range": [-1.0, 1.0], "dims": FROM_THE_DATA}
    text = format_description(declared)
    assert '  options:\n    level (required)  [int]\n    mode = "fast"  [str]\n' in text
    assert "  embedded data: no (give root: a data folder)\n" in text and '  modalities: ["A", "B"]\n' in text
    assert "  embedded data: yes (root: embedded; bench data make hipmri DIR; n=64, seed=0)" in format_description(
        hipmri
    )


def test_metric_options_direction_kind_dims_and_version(registry) -> None:
    psnr = describe(find(registry, "psnr")[0])
    assert psnr["options"] == {
        "max_db": {"default": DEFAULT_MAX_DB, "type": "float"},
        "out_of_range": {"default": "error", "type": "str"},
    }
    assert (psnr["higher_is_better"], psnr["direction"], psnr["kind"]) == (True, "higher is better", "paired")
    assert psnr["dims"] == [2, 3] and psnr["version"] == PSNR.version and "needs_train" not in psnr
    fwd = describe(find(registry, "forwarding")[0])
    # **options is followed into the base class's constructor; data_range and dims are the engine's.
    assert fwd["options"] == {
        "threshold": {"default": 0.5, "type": "float"},
        "window": {"default": 7, "type": "int"},
        "weights": {"default": None, "type": "str | None"},
    }
    assert fwd["summary"] == "A metric whose options are partly its base class's."
    assert fwd["direction"] == "no direction declared (higher_is_better is None)" and fwd["needs_train"] is True
    assert fwd["provider"]["distribution"] == "(direct)" and fwd["version"] == "3.1"
    text = format_description(fwd)
    assert text.endswith("  kind: distribution (needs the training split)\n  dims: 3D")


def test_unknown_and_broken_names(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match=r"^unknown plugin 'vqvea'; did you mean 'vqvae'\? \(installed: declared, "):
        find(registry, "vqvea")
    with pytest.raises(PluginError, match=r"^unknown plugin 'zzz' \(installed: "):
        find(registry, "zzz")
    broken = load_registry(only=["no_such_module_here"])
    with pytest.raises(PluginError, match=r"^plugin 'no_such_module_here' failed to load: ModuleNotFoundError"):
        find(broken, "no_such_module_here")
    assert [d["name"] for d in json.loads(render(registry, "medgen-bench:psnr", as_json=True))] == ["psnr"]
    listing = json.loads(render(registry, None, as_json=True))
    assert listing["api_version"] == API_VERSION
    assert {"type": "dataset", "name": "folder"} in [p for e in listing["entry_points"] for p in e["provides"]]


def test_cli_details_json_and_suggestions(tmp_path) -> None:
    env = {**os.environ, "BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}  # two plugins load faster than all of them

    def bench(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "bench_core", "-p", "folder", "-p", "ssim", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    result = bench("plugins", "--details", "folder", "--json")
    assert result.returncode == 0, result.stderr
    [desc] = json.loads(result.stdout)
    assert desc["type"] == "dataset" and desc["options"]["fit"] == {"default": "resize", "type": "str"}
    result = bench("plugins", "--details", "sssim")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown plugin 'sssim'; did you mean 'ssim'")
    # `bench --help` and the plugins listing stay torch-free: describe imports torch only when describing.
    check = "import sys, bench_core.cli, bench_core.describe; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == "False"
