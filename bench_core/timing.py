"""Throughput timing shared by the engine (training and evaluation) and the pytest-benchmark tests.

One protocol everywhere: wall clock (``time.perf_counter``) around the timed work, with the
device synchronised before and after so that asynchronous CUDA kernels are counted in the
interval that launched them, and the first interval(s) left out as warm-up (cuDNN autotuning,
allocator growth, lazy initialisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

DeviceLike = torch.device | str | None


def _device_type(device: Any) -> str | None:
    """``"cuda"``, ``"cpu"``, ... for a torch.device, a device string or any object with a ``type``; None for None."""
    if device is None:
        return None
    if isinstance(device, str):
        return torch.device(device).type
    return getattr(device, "type", None)


def _clock(device: DeviceLike) -> str:
    """How intervals on ``device`` are timed, e.g. ``"wall clock, CUDA-synchronised"``."""
    kind = _device_type(device)
    return "wall clock, CUDA-synchronised" if kind == "cuda" else f"wall clock, {kind or 'cpu'} (synchronous)"


def synchronize(device: DeviceLike) -> None:
    """Wait for all queued work on ``device`` when it is a CUDA device; no-op for the CPU, other devices and None."""
    if _device_type(device) == "cuda":
        torch.cuda.synchronize(torch.device(device) if isinstance(device, str) else device)


class ThroughputMeter:
    """Items per second over synchronised wall-clock intervals, the first ``skip_first`` excluded as warm-up.

    Usage::

        meter = ThroughputMeter(device)
        for batch in loader:
            with meter.measure(len(batch)):
                model(batch)
        meter.per_second, meter.protocol
    """

    def __init__(self, device: DeviceLike, skip_first: int = 1) -> None:
        if skip_first < 0:
            raise ValueError(f"skip_first must be >= 0, got {skip_first}")
        self.device = device
        self.skip_first = skip_first
        self.warmup_intervals = 0
        self._items = 0
        self._seconds = 0.0
        self._intervals = 0

    @contextmanager
    def measure(self, items: int) -> Iterator[None]:
        """Time the ``with`` body as one interval of ``items`` items (not recorded if the body raises)."""
        synchronize(self.device)  # work queued before the interval is not its cost
        start = time.perf_counter()
        yield
        synchronize(self.device)  # kernels launched by the body finish inside the interval
        elapsed = time.perf_counter() - start
        if self.warmup_intervals < self.skip_first:
            self.warmup_intervals += 1
            return
        self._items += items
        self._seconds += elapsed
        self._intervals += 1

    @property
    def items(self) -> int:
        """Items of the timed (non-warm-up) intervals."""
        return self._items

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the timed (non-warm-up) intervals."""
        return self._seconds

    @property
    def intervals(self) -> int:
        """Number of timed (non-warm-up) intervals."""
        return self._intervals

    @property
    def per_second(self) -> float | None:
        """Timed items per timed second; None when nothing was timed (or it took no measurable time)."""
        return self._items / self._seconds if self._intervals and self._seconds > 0 else None

    @property
    def protocol(self) -> str:
        """One line saying what was timed, for result details and benchmark reports."""
        return f"{_clock(self.device)}, first {self.skip_first} interval(s) excluded as warm-up"


@dataclass(frozen=True)
class Timing:
    """How :func:`benchmark_throughput` times: on ``device`` (synchronised on CUDA), ``rounds`` calls after warm-up."""

    device: DeviceLike
    rounds: int = 5
    warmup_rounds: int = 1


def benchmark_throughput(
    benchmark: Any, fn: Callable[[], object], *, items: int, timing: Timing, unit: str = "images", **extra: Any
) -> float:
    """Time ``fn`` (processing ``items`` items per call) with pytest-benchmark's pedantic mode; return items/s.

    Each round is one synchronised call, so CUDA work finishes inside the round that launched it.
    ``benchmark.extra_info`` receives the device (and the GPU's name on CUDA), ``f"{unit}_per_s"``,
    the timing protocol, torch's version and thread count, and ``extra``.

    Under ``--benchmark-disable`` pytest-benchmark calls ``fn`` once without statistics: the
    throughput is then that single call's, warm-up included, and the protocol says so. ``fn``'s
    return value is discarded; capture results in a closure when the test checks them.
    """
    device, rounds, warmup_rounds = timing.device, timing.rounds, timing.warmup_rounds
    disabled = bool(getattr(benchmark, "disabled", False))
    # pedantic runs fn once when disabled and warmup_rounds + rounds times otherwise: the meter
    # skips exactly the warm-up calls, so it times the same calls as the benchmark's statistics.
    meter = ThroughputMeter(device, skip_first=0 if disabled else warmup_rounds)

    def timed() -> None:
        with meter.measure(items):
            fn()

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None and stats.stats.mean > 0:
        per_second = items / stats.stats.mean
        protocol = f"{_clock(device)}, one call per round, mean of {rounds} round(s) after {warmup_rounds} warm-up"
    else:
        per_second = meter.per_second or float("nan")
        protocol = f"{_clock(device)}, a single call, warm-up included (benchmark disabled)"

    info: dict[str, Any] = {"device": str(device)}
    if _device_type(device) == "cuda":
        info["device_name"] = torch.cuda.get_device_name(torch.device(device) if isinstance(device, str) else device)
    info.update(
        {
            f"{unit}_per_s": per_second,
            f"{unit}_per_round": items,
            "timing_protocol": protocol,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }
    )
    info.update(extra)
    benchmark.extra_info.update(info)
    return per_second
