"""Helpers shared by the built-in model plugins (private to ``bench_plugins.models``).

One copy of what several models need: evaluation mode as a context, the Gaussian KL, the
mapping between a dataset's value range and ``[-1, 1]``, one rule for where noise is drawn,
and the bookkeeping of converting a source checkpoint into our parameter names (every key of
the source used once, every key of ours set once, otherwise an error naming them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from bench_core.api import BenchError


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode, then restore its previous mode.

    Evaluation, sampling and code extraction must never move batch-norm or codebook
    statistics, even when the caller left the model in training mode (a source bug updated
    the EMA codebooks on validation batches).
    """
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def gaussian_kl(
    mu_q: Tensor, std_q: Tensor, mu_p: Tensor | None = None, std_p: Tensor | None = None, var_floor: float = 0.0
) -> Tensor:
    """Elementwise ``KL(N(mu_q, std_q^2) || N(mu_p, std_p^2))`` in nats.

    Without ``mu_p``/``std_p`` the prior is N(0, 1). ``var_floor`` (> 0) floors the prior
    variance in the denominator, as the 3D VDVAE source does.
    """
    if mu_p is None or std_p is None:
        return -torch.log(std_q) + 0.5 * (std_q**2 + mu_q**2) - 0.5
    var_p = std_p**2
    if var_floor > 0:
        var_p = var_p.clamp_min(var_floor)
    return torch.log(std_p) - torch.log(std_q) + (std_q**2 + (mu_q - mu_p) ** 2) / (2.0 * var_p) - 0.5


class UnitRange:
    """Maps a dataset's value range ``(lo, hi)`` to ``[-1, 1]`` (where the networks work) and back."""

    def __init__(self, value_range: tuple[float, float]) -> None:
        self.lo, self.hi = float(value_range[0]), float(value_range[1])

    def to_unit(self, x: Tensor) -> Tensor:
        """Dataset range -> ``[-1, 1]``."""
        return (x - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0

    def from_unit(self, y: Tensor) -> Tensor:
        """``[-1, 1]`` -> dataset range."""
        return (y + 1.0) * ((self.hi - self.lo) / 2.0) + self.lo


def noise(kind: str, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard-normal (``"normal"``) or uniform ``[0, 1)`` (``"uniform"``) noise shaped and typed like ``like``.

    The one rule every model follows: without a generator the noise comes from the global
    stream on ``like``'s device; with one it is drawn on the generator's device (the engine
    hands in a CPU generator even when the model runs on CUDA, so seeded draws are the same
    on every device) and moved to ``like``'s device.
    """
    draw = {"normal": torch.randn, "uniform": torch.rand}[kind]
    if generator is None:
        return draw(like.shape, dtype=like.dtype, device=like.device)
    return draw(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


# -- source checkpoints -------------------------------------------------------------------------


def source_error(model: str, message: str) -> BenchError:
    """A conversion error that names the model: ``"<model> source checkpoint: <message>"``."""
    return BenchError(f"{model} source checkpoint: {message}")


def only_dict(sources: list[Any], model: str, what: str) -> Mapping[str, Any]:
    """The single source file of a model whose source saves one file (a mapping)."""
    if len(sources) != 1:
        raise source_error(model, f"expected one file ({what}), got {len(sources)}")
    state = sources[0]
    if not isinstance(state, Mapping):
        raise source_error(model, f"expected a dict ({what}), got {type(state).__name__}")
    return state


def sub_state(state: Mapping[str, Any], key: str, model: str, strip: str = "") -> dict[str, Tensor]:
    """``state[key]`` as a flat ``{name: tensor}`` dict, with the prefix ``strip`` removed from every name."""
    if key not in state:
        raise source_error(model, f"no {key!r} entry (top-level keys: {sorted(state)[:8]})")
    part = state[key]
    if not isinstance(part, Mapping):
        raise source_error(model, f"{key!r} is a {type(part).__name__}, not a state dict")
    out = {}
    for name, value in part.items():
        if not isinstance(value, Tensor):
            raise source_error(model, f"{key}[{name!r}] is a {type(value).__name__}, not a tensor")
        out[name[len(strip) :] if strip and name.startswith(strip) else name] = value
    return out


def check_shape(model: str, ours: str, source: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``value`` if its shape is ``shape``, else an error naming both keys and both shapes."""
    if tuple(value.shape) != tuple(shape):
        raise source_error(
            model, f"{source} has shape {tuple(value.shape)}, but {ours} needs {tuple(shape)} (another config?)"
        )
    return value


def by_name(
    model: str,
    target: Mapping[str, Tensor],
    source: Mapping[str, Tensor],
    name: Callable[[str], str],
    transform: Callable[[str, Tensor], Tensor] | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Our state dict from a source state dict whose key for our key ``k`` is ``name(k)``.

    ``target`` holds our keys and tensors (shapes only are used). Every key of ours must find
    its source key and every source key must be used, except those in ``ignore``; otherwise
    the error names the first missing and the first unknown keys. ``transform(our_key,
    tensor)`` reshapes or permutes a source tensor into our layout before the shape check.
    """
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for key, like in target.items():
        src = name(key)
        if src not in source:
            missing.append(f"{src} (for {key})")
            continue
        used.add(src)
        value = source[src]
        if transform is not None:
            value = transform(key, value)
        out[key] = check_shape(model, key, src, value, tuple(like.shape)).to(like.dtype)
    unknown = sorted(set(source) - used - set(ignore))
    _raise_unmatched(model, missing, unknown)
    return out


def by_order(model: str, target: Mapping[str, Tensor], source: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """Pair our keys with the source's in registration order (both built module by module in one order).

    Used where our modules are constructed in the source's order under other names: each pair
    must agree in its last name part (``weight``, ``bias``, ``running_mean`` ...) and shape, and
    the counts must match; the error names the first key that does not.
    """
    ours, theirs = list(target.items()), list(source.items())
    out: dict[str, Tensor] = {}
    for (key, like), (src, value) in zip(ours, theirs, strict=False):
        if key.rsplit(".", 1)[-1] != src.rsplit(".", 1)[-1]:
            raise source_error(model, f"{what}: source key {src} does not line up with {key} (another architecture?)")
        out[key] = check_shape(model, key, src, value, tuple(like.shape)).to(like.dtype)
    missing = [f"(for {k})" for k, _ in ours[len(theirs) :]]
    unknown = [k for k, _ in theirs[len(ours) :]]
    if missing or unknown:
        raise source_error(
            model,
            f"{what}: {len(theirs)} source tensors for {len(ours)} of ours"
            + (f"; missing the source tensor for {ours[len(theirs)][0]}" if missing else "")
            + (f"; unknown source key {unknown[0]}" if unknown else ""),
        )
    return out


def _raise_unmatched(model: str, missing: list[str], unknown: list[str]) -> None:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    if unknown:
        parts.append(f"unknown {len(unknown)} key(s), e.g. {', '.join(unknown[:3])}")
    if parts:
        raise source_error(model, "; ".join(parts))
