"""The shared throughput timing: meter arithmetic, warm-up exclusion, CUDA synchronisation, pytest-benchmark glue."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench_core import timing
from bench_core.timing import ThroughputMeter, Timing, benchmark_throughput, synchronize

SLEEP = 0.02
# time.sleep never returns early; on a loaded 2-core machine it may return late by a lot.
SLACK = 0.25


@pytest.fixture
def sync_calls(monkeypatch) -> list[object]:
    """Record torch.cuda.synchronize calls instead of making them (no GPU needed)."""
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return calls


def _fixture(request, disabled: bool, collected: list) -> BenchmarkFixture:
    """A real pytest-benchmark fixture in the given mode, whatever --benchmark-disable says, kept off the report."""
    session = request.config._benchmarksession
    return BenchmarkFixture(
        request.node, add_stats=collected.append, logger=session.logger, warner=request.node.warn,
        disabled=disabled, **session.options,
    )  # fmt: skip


def test_meter_sleeping_body_gives_items_over_seconds() -> None:
    meter = ThroughputMeter("cpu", skip_first=0)
    for _ in range(3):
        with meter.measure(4):
            time.sleep(SLEEP)
    assert (meter.items, meter.intervals, meter.warmup_intervals) == (12, 3, 0)
    assert 3 * SLEEP <= meter.seconds < 3 * SLEEP + SLACK
    assert meter.per_second == pytest.approx(12 / meter.seconds)
    assert 12 / (3 * SLEEP + SLACK) < meter.per_second <= 4 / SLEEP  # 200 images/s at most


def test_meter_skip_first_excludes_warmup_intervals() -> None:
    meter = ThroughputMeter("cpu", skip_first=2)
    for items, seconds in [(100, 0.3), (50, 0.3), (3, SLEEP), (5, SLEEP)]:
        with meter.measure(items):
            time.sleep(seconds)
    assert (meter.warmup_intervals, meter.intervals, meter.items) == (2, 2, 8)
    assert 2 * SLEEP <= meter.seconds < 0.3  # neither 0.3 s warm-up interval is in
    assert "first 2 interval(s) excluded as warm-up" in meter.protocol


def test_meter_without_timed_intervals_has_no_throughput() -> None:
    meter = ThroughputMeter("cpu")
    assert meter.per_second is None
    with meter.measure(8):
        pass
    assert (meter.warmup_intervals, meter.intervals, meter.items, meter.per_second) == (1, 0, 0, None)


def test_meter_does_not_record_a_failed_interval() -> None:
    meter = ThroughputMeter("cpu", skip_first=0)
    with pytest.raises(RuntimeError), meter.measure(8):
        raise RuntimeError("out of memory")
    assert (meter.intervals, meter.items, meter.per_second) == (0, 0, None)


def test_meter_rejects_negative_skip() -> None:
    with pytest.raises(ValueError, match="skip_first"):
        ThroughputMeter("cpu", skip_first=-1)


@pytest.mark.parametrize("device", [torch.device("cuda"), "cuda:0", SimpleNamespace(type="cuda")])
def test_synchronize_calls_cuda_synchronize_on_cuda_devices(sync_calls, device) -> None:
    synchronize(device)
    assert len(sync_calls) == 1
    assert getattr(sync_calls[0], "type", None) == "cuda"


@pytest.mark.parametrize("device", [torch.device("cpu"), "cpu", "meta", None])
def test_synchronize_is_a_no_op_elsewhere(sync_calls, device) -> None:
    synchronize(device)
    assert sync_calls == []


def test_meter_synchronises_before_and_after_each_interval(sync_calls) -> None:
    meter = ThroughputMeter(torch.device("cuda"))
    seen_inside: list[int] = []
    for _ in range(2):
        with meter.measure(1):
            seen_inside.append(len(sync_calls))
    assert seen_inside == [1, 3]  # one call before each body, one after
    assert len(sync_calls) == 4
    assert meter.protocol == "wall clock, CUDA-synchronised, first 1 interval(s) excluded as warm-up"


def test_benchmark_throughput_with_the_benchmark_fixture(benchmark) -> None:
    """The project's own fixture, in whichever mode pytest runs (disabled by default)."""
    calls: list[float] = []

    def fn() -> None:
        calls.append(time.perf_counter())
        time.sleep(SLEEP)

    per_second = benchmark_throughput(benchmark, fn, items=4, timing=Timing("cpu", rounds=2), batch_size=4)
    assert len(calls) == (1 if benchmark.disabled else 3)
    assert 4 / (SLEEP + SLACK) < per_second <= 4 / SLEEP
    info = benchmark.extra_info
    assert info["images_per_s"] == per_second
    assert (info["device"], info["batch_size"], info["torch_version"]) == ("cpu", 4, torch.__version__)
    assert info["torch_threads"] == torch.get_num_threads()


def test_benchmark_throughput_enabled_uses_the_benchmark_mean(request) -> None:
    collected: list = []
    bench = _fixture(request, disabled=False, collected=collected)
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else SLEEP)  # a slow first call, as a cold cache would be

    timing = Timing("cpu", rounds=3, warmup_rounds=1)
    per_second = benchmark_throughput(bench, fn, items=6, timing=timing, unit="samples")
    assert len(calls) == 4 and len(collected) == 1
    assert per_second == pytest.approx(6 / bench.stats.stats.mean)
    assert 6 / (SLEEP + SLACK) < per_second <= 6 / SLEEP  # the 0.3 s warm-up call is not in the mean
    assert bench.extra_info["samples_per_s"] == per_second
    assert bench.extra_info["samples_per_round"] == 6
    assert "mean of 3 round(s) after 1 warm-up" in bench.extra_info["timing_protocol"]


def test_benchmark_throughput_disabled_times_the_single_call(request) -> None:
    bench = _fixture(request, disabled=True, collected=[])
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        time.sleep(SLEEP)

    per_second = benchmark_throughput(bench, fn, items=2, timing=Timing("cpu", rounds=5, warmup_rounds=2))
    assert len(calls) == 1 and bench.stats is None
    assert 2 / (SLEEP + SLACK) < per_second <= 2 / SLEEP
    assert "benchmark disabled" in bench.extra_info["timing_protocol"]


def test_benchmark_throughput_synchronises_inside_each_round_on_cuda(request, sync_calls) -> None:
    bench = _fixture(request, disabled=False, collected=[])
    inside: list[int] = []
    benchmark_throughput(bench, lambda: inside.append(len(sync_calls)), items=1, timing=Timing("cuda", rounds=2))
    # 3 calls (1 warm-up + 2 rounds), each between its own synchronisations
    assert inside == [1, 3, 5] and len(sync_calls) == 6
    assert (bench.extra_info["device"], bench.extra_info["device_name"]) == ("cuda", "Fake GPU")
    assert "CUDA-synchronised" in bench.extra_info["timing_protocol"]


def test_clock_description_names_the_device() -> None:
    assert timing._clock("cpu") == "wall clock, cpu (synchronous)"
    assert timing._clock(None) == "wall clock, cpu (synchronous)"
