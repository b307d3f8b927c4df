"""Paired training augmentation applied by the engine to whole batches, never at evaluation.

Every transform draws its random parameters once per item and applies them to every
modality of that item, so an (A, B) pair stays aligned. Transforms run on the device on
the collated batch (one ``torch.where`` or one ``grid_sample`` per batch, no per-item
Python work). The generator is the caller's: the trainer seeds it from the cell seed and
saves its state with the train state, so a resumed run draws the same augmentations.

Settings are a mapping, as written in a suite's dataset entry::

    augment:
      hflip: 0.5                  # probability of a left-right flip
      vflip: 0.5                  # probability of an up-down flip
      resized_crop: {p: 0.5, scale: 0.0025, shift: 16}

``resized_crop`` is the GOLD source's: with probability ``p`` a box of ``size * (1 ± scale)``
pixels per axis (uniform, truncated to an integer) at an integer offset in
``[-shift/2, shift/2]`` is resized back to the full size (bilinear); outside the image it reads
the value range's low end, as the source's zero padding does on its ``[0, 1]`` images.
Flips apply to the last two axes, so 3D volumes flip in-plane.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bench_core.api import BenchError

TRANSFORMS = ("hflip", "vflip", "resized_crop")
_CROP_KEYS = {"p": 0.5, "scale": 0.0, "shift": 0}


def check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate augmentation settings; return them with the crop's defaults filled in.

    ``where`` names the suite key for the error message (e.g. ``datasets[1].augment``).
    """
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in TRANSFORMS:
            raise BenchError(f"{where}: unknown augmentation {name!r}; expected one of {', '.join(TRANSFORMS)}")
        if name == "resized_crop":
            if not isinstance(value, Mapping):
                raise BenchError(f"{where}.resized_crop: expected a mapping with p, scale, shift; got {value!r}")
            unknown = set(value) - set(_CROP_KEYS)
            if unknown:
                raise BenchError(f"{where}.resized_crop: unknown key(s) {sorted(unknown)}; expected p, scale, shift")
            crop = {**_CROP_KEYS, **value}
            _probability(crop["p"], f"{where}.resized_crop.p")
            if not 0 <= float(crop["scale"]) < 1 or int(crop["shift"]) < 0:
                raise BenchError(f"{where}.resized_crop: need 0 <= scale < 1 and shift >= 0; got {value!r}")
            out[name] = {"p": float(crop["p"]), "scale": float(crop["scale"]), "shift": int(crop["shift"])}
        else:
            out[name] = _probability(value, f"{where}.{name}")
    return out


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise BenchError(f"{where}: expected a probability between 0 and 1, got {value!r}")
    return float(value)


class PairedAugment:
    """Callable applying validated ``settings`` to the image tensors of a collated batch.

    Args:
        settings: output of :func:`check_settings`.
        modalities: the keys of the batch holding images (``DataSpec.modalities``).
        low: the low end of the data's value range (what a crop reads outside the image), or
            one per modality when their ranges differ.
    """

    def __init__(
        self, settings: Mapping[str, Any], modalities: tuple[str, ...], low: float | Mapping[str, float]
    ) -> None:
        self.settings = dict(settings)
        self.modalities = modalities
        self.low = low

    def __bool__(self) -> bool:
        return bool(self.settings)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """The batch with every modality transformed by the same per-item draws."""
        if not self.settings:
            return batch
        xs = [batch[m] for m in self.modalities]
        both = torch.cat(xs, dim=1)
        n = both.shape[0]

        def coin(p: float) -> torch.Tensor:
            draw = torch.rand(n, generator=generator) < p
            return draw.to(both.device).view(n, *([1] * (both.dim() - 1)))

        # A fixed order (and a draw per transform even at p = 0) keeps the random stream stable.
        if "vflip" in self.settings:
            both = torch.where(coin(self.settings["vflip"]), both.flip(-2), both)
        if "hflip" in self.settings:
            both = torch.where(coin(self.settings["hflip"]), both.flip(-1), both)
        crop = self.settings.get("resized_crop")
        if crop is not None:
            if both.dim() != 4:
                raise BenchError("augment.resized_crop works on 2D images; the batch holds 3D volumes")
            mask = coin(crop["p"])
            low: float | torch.Tensor = self.low if not isinstance(self.low, Mapping) else torch.cat(
                [torch.full((x.shape[1],), float(self.low[m])) for m, x in zip(self.modalities, xs, strict=True)]
            ).to(both).view(1, -1, 1, 1)  # fmt: skip
            both = torch.where(mask, resized_crop(both, crop["scale"], crop["shift"], low, generator), both)
        out = dict(batch)
        for m, part in zip(self.modalities, both.split([x.shape[1] for x in xs], dim=1), strict=True):
            out[m] = part
        return out


def resized_crop(
    x: torch.Tensor, scale: float, shift: int, low: float | torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Crop a box of ``size * (1 ± scale)`` px per axis at an integer offset, resized back to ``(H, W)``."""
    n, _, h, w = x.shape
    size = torch.tensor([h, w], dtype=torch.float32)
    extent = (size * (1.0 + scale * (2.0 * torch.rand(n, 2, generator=generator) - 1.0))).floor()
    offset = torch.randint(-(shift // 2), shift // 2 + 1, (n, 2), generator=generator).float()  # (top, left)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = extent[:, 1] / w, extent[:, 0] / h
    theta[:, 0, 2] = (2.0 * offset[:, 1] + extent[:, 1]) / w - 1.0
    theta[:, 1, 2] = (2.0 * offset[:, 0] + extent[:, 0]) / h - 1.0
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    # Zero padding of x - low pads with `low` once shifted back.
    return F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
