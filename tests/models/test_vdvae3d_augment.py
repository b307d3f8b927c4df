"""Seed 001's training augmentations for ``vdvae3d`` (``source_augment``), built from MONAI and TorchIO."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch

from bench_core.api import BenchError, DataSpec, merge_config
from bench_plugins.models import source001_augment as aug_module
from bench_plugins.models.vdvae3d import VDVAE3D

SMALL = {"channels": 4, "latents_per_channel": 1, "channels_per_latent": 2, "kernel_sizes_bottom_up": 3}
SMALL["kernel_sizes_top_down"] = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _volumes(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_missing_libraries_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchio", None)
    with pytest.raises(BenchError, match=r"medgen-bench\[3d\]"):
        aug_module.source001_augment(16)


def test_only_the_source_configs_offer_it_and_it_is_off() -> None:
    for name in ("32", "64", "128"):
        assert VDVAE3D.configs[name]["source_augment"] is False
        assert VDVAE3D.configs[name]["source_augment_p"] == 0.1
    assert "source_augment" not in VDVAE3D.configs["tiny"]


def test_chain_is_seeded_and_keeps_shape_and_range() -> None:
    pytest.importorskip("monai")
    pytest.importorskip("torchio")
    x = _volumes()[0]
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        augment = aug_module.source001_augment(16, p=1.0)  # every transform fires
        outs.append(augment(x))
    assert outs[0].shape == x.shape and outs[0].dtype == x.dtype
    assert outs[0].min() == -1.0 and outs[0].max() == 1.0  # z-scored, then rescaled to [-1, 1]
    torch.testing.assert_close(outs[0], outs[1])  # the same torch seed draws the same chain
    assert (outs[0] - x).abs().mean() > 0.1
    # At p = 0 only the source's unconditional steps run: 95% crop, resize back, z-score, rescale.
    calm = aug_module.source001_augment(16, p=0.0)(x)
    assert calm.shape == x.shape and calm.min() == -1.0 and calm.max() == 1.0


def test_a_resumed_chain_draws_what_an_uninterrupted_one_does() -> None:
    """The trainer restores torch's random state on resume; MONAI's NumPy draws must follow it."""
    pytest.importorskip("monai")
    pytest.importorskip("torchio")
    volumes = _volumes(4)
    torch.manual_seed(5)
    augment = aug_module.source001_augment(16, p=0.5)
    straight = []
    for i, v in enumerate(volumes):
        if i == 2:
            saved = torch.get_rng_state()
        straight.append(augment(v))
    torch.set_rng_state(saved)  # a new process: a fresh chain, torch's state from the checkpoint
    resumed = aug_module.source001_augment(16, p=0.5)
    for v, expected in zip(volumes[2:], straight[2:], strict=True):
        torch.testing.assert_close(resumed(v), expected, rtol=0, atol=0)
    assert not torch.equal(straight[2], straight[3])  # and the volumes' draws differ from each other


def test_vdvae3d_trains_on_augmented_volumes_only() -> None:
    pytest.importorskip("monai")
    pytest.importorskip("torchio")
    config = merge_config(VDVAE3D.configs["32"], {**SMALL, "source_augment": True, "source_augment_p": 1.0})
    torch.manual_seed(0)
    model = VDVAE3D(config, DataSpec(("image",), (1,), 3, (16, 16, 16), (-1.0, 1.0)))
    x = _volumes()
    seen = []
    model.terms = lambda v, generator=None, _terms=model.terms: seen.append(v) or _terms(v, generator)
    loss = model.loss({"image": x})["loss"]
    assert torch.isfinite(loss) and not torch.equal(seen[0], x)
    assert model.reconstruct(x, "image").shape == x.shape  # evaluation never augments
    assert len(seen) == 1
