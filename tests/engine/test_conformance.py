"""Every built-in plugin passes the conformance kit that third-party authors use."""

import pytest
import torch

from bench_core.plugins import load_registry
from bench_core.testing import check_dataset_plugin, check_metric_plugin, check_model_plugin

REGISTRY = load_registry()


def builtins(kind):
    return sorted((r for r in REGISTRY.entries(kind) if r.source.distribution == "medgen-bench"), key=lambda r: r.name)


@pytest.fixture(autouse=True)
def one_thread():
    # Small CPU models run faster and steadier on one thread when the machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_entry_point_of_this_distribution_loads():
    broken = [f"{s.entry_point}: {s.error}" for s in REGISTRY.sources if s.distribution == "medgen-bench" and s.error]
    assert broken == []


@pytest.mark.parametrize("reg", builtins("model"), ids=lambda r: r.name)
def test_model_conformance(reg):
    check_model_plugin(reg.cls, config="tiny" if "tiny" in reg.cls.configs else None)


@pytest.mark.parametrize("reg", builtins("dataset"), ids=lambda r: r.name)
def test_dataset_conformance(reg, tmp_path):
    check_dataset_plugin(reg.cls, tmp_path)


# The kit's images are 32x32 (16^3 in 3D): MS-SSIM needs fewer scales there, and the Inception
# metrics run with explicitly random weights (never downloaded) and small features to stay fast.
METRIC_OPTIONS = {
    ("ms-ssim", 2): {"scales": 2},
    ("ms-ssim", 3): {"scales": 1},
    ("fid", 2): {"weights": "random:0", "feature_dims": 64},
    ("fid", 3): {"weights": "random:0", "feature_dims": 64},
    ("kid", 2): {"weights": "random:0", "feature_dims": 64, "subset_size": 4},
    ("kid", 3): {"weights": "random:0", "feature_dims": 64, "subset_size": 4},
    **{(name, dims): {"features": "pyramid"} for name in ("prdc", "copies", "authenticity") for dims in (2, 3)},
    **{("data-copying", dims): {"features": "pyramid", "tau": 0.1} for dims in (2, 3)},
}


@pytest.mark.parametrize("reg", builtins("metric"), ids=lambda r: r.name)
def test_metric_conformance(reg):
    for dims in sorted(reg.cls.dims):
        check_metric_plugin(reg.cls, dims=dims, **METRIC_OPTIONS.get((reg.name, dims), {}))


def test_kit_catches_broken_plugins():
    from fakeplugins import MAE, ToyAE

    class Forgetful(MAE):
        name = "forgetful"

        def reset(self):  # does not forget
            pass

    with pytest.raises(AssertionError, match="reset\\(\\) kept state"):
        check_metric_plugin(Forgetful)

    class WrongShape(ToyAE):
        def reconstruct(self, x, modality):
            return x[..., :-1]

    with pytest.raises(AssertionError, match=r"reconstruct\(image\) shape \(3, 1, 16, 15\), expected \(3, 1, 16, 16\)"):
        check_model_plugin(WrongShape, spec=_toy_spec())


def _toy_spec():
    from bench_core.api import DataSpec

    return DataSpec(("image",), (1,), 2, (16, 16), (-1.0, 1.0))
