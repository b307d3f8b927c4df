"""torch.compile (inductor) and channels-last on the CPU for every built-in model (issue #21.2).

Per model and config, four variants built from the same initial weights:

- ``eager``: what every model ran on the CPU before issue #21.2 (contiguous tensors, not compiled);
- ``channels_last``: model and inputs in channels-last memory format (``channels_last_3d`` for
  volumes): phvae through its ``channels_last`` option (on by default in its tiny config since
  these measurements: the only default changed), the others by ``Module.to``, as the VQ-VAE-2
  models' ``channels_last`` option does on CUDA;
- ``compile``: the modules the training losses and capabilities call, compiled with inductor
  (the engine's ``compile_children``: for phvae its encoders and decoders);
- ``compile+channels_last``: both.

Numerics, at the same weights: the inference output (eval mode) and the first training loss
and gradients under one seed, each as the largest absolute difference from ``eager``; a variant
is *equivalent* when the outputs and losses are within 1e-5 (``TOLERANCE``). Inductor runs with
``fallback_random`` so that latents and dropout draw eager's random numbers. Timing: training
steps (every stage once, forward, backward, the stage's clipping and optimiser step) and
inference calls, the variants interleaved round by round, each call timed with
``bench_core.timing.ThroughputMeter`` after two warm-up calls (compilation, the train/eval
switch); compile time is the first calls' time. One CPU thread: other work on a shared 2-core
machine makes multi-thread timings swing; the load average is recorded.

The default run (``--benchmark-disable``) checks eager against channels-last at the tiny
configs only (compiling takes 15-180 s per variant on the shared 2-core machine);
``--benchmark-enable`` adds compilation and the source configs. The measured tables, with the
machine's load, are in docs/performance.md. Each case's ``extra_info`` (and the printed line) gives the speed-ups,
the differences, what the model applies by default on the CPU (``DEFAULTS``) and, against the
issue's target of 1.25x faster training steps for the VQ models and phvae, by how much the
best equivalent variant missed.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
from model_cases import Case

from bench_core.api import DataSpec, merge_config
from bench_core.timing import ThroughputMeter
from bench_core.torchutil import compile_children
from bench_core.trainer import build_optimizer
from bench_plugins.models.phvae import PHVAE
from bench_plugins.models.pixelcnn import PixelCNNVQVAE2
from bench_plugins.models.vdvae3d import VDVAE3D
from bench_plugins.models.vqvae import VQVAE
from bench_plugins.models.vqvae2 import VQVAE2

TOLERANCE = 1e-5  # issue #21.2: what is on by default must stay within this of today's outputs
TARGET = 1.25  # issue #21.2: training steps at least this much faster for the VQ models and phvae
TARGET_MODELS = {"vqvae", "vqvae2", "pixelcnn", "phvae"}
VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")

# The variant each model runs on the CPU by default after these measurements, and why (figures: docs/performance.md).
DEFAULTS = {
    "vqvae": (
        "eager",
        "compiled, its EMA codebook update is wrong (inductor drops add_'s alpha after a matmul: "
        "test_inductor_compiles_the_ema_update_as_eager), slower at tiny (graph breaks at dead-code restarts) and "
        "fails to build at seed003; channels-last is faster and equivalent at tiny, but this model has no option "
        "for it (a change to the model, not measured here)",
    ),
    "vqvae2": (
        "eager",
        "compiled, its EMA codebooks are wrong (as vqvae); channels-last is faster and equivalent at tiny, but "
        "its channels_last option applies on CUDA only (a change to the model, not measured here)",
    ),
    "pixelcnn": ("eager", "as vqvae2 for its VQ-VAE stage; the priors already keep channels-last feature maps"),
    "phvae": (
        "channels_last",
        "channels-last (config channels_last, on in tiny) is faster for training and equivalent; compiling "
        "takes one to three minutes, longer than it saves in a tiny cell of 200 steps",
    ),
    "vdvae3d": ("eager", "not a target model of the issue; measured for completeness"),
}


@pytest.fixture(autouse=True)
def _one_thread(tmp_path, monkeypatch) -> Iterator[None]:
    # An empty inductor cache per test: compile times are a first run's, and nothing lands in the user's cache.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The quickstart's data (suites/quickstart.yaml) at each tiny config's batch size.
TINY = [
    Case(VQVAE, "tiny", (1,), (64, 32), 16),
    Case(VQVAE2, "tiny", (1,), (64, 32), 16),
    Case(PixelCNNVQVAE2, "tiny", (1,), (64, 32), 16),
    Case(PHVAE, "tiny", (1, 1), (32, 32), 4, "eager = channels_last off", {"channels_last": False}),
    Case(VDVAE3D, "tiny", (1,), (32, 32, 32), 2, "the quickstart's batch 2"),
]
# The sources' settings, reduced where a CPU step would take minutes; what differs is said.
SOURCE = [
    Case(VQVAE, "seed003-hipmri", (1,), (256, 128), 16),
    Case(VQVAE2, "seed004-hipmri", (1,), (256, 128), 10),
    Case(VQVAE2, "seed002-oasis", (1,), (64, 64), 64),
    Case(PixelCNNVQVAE2, "seed002-oasis", (1,), (64, 64), 8, "batch 8 instead of 64 (the priors' step)"),
    Case(PHVAE, "ndvi-rgb-nll", (3, 1), (64, 64), 1, "64x64 (7 resolutions) instead of 256x256 (18.8 GB a step, #21)",
         {"n_resolutions": 7}),
    Case(VDVAE3D, "32", (1,), (32, 32, 32), 2),
]  # fmt: skip
# Not run: vdvae3d 64 (batch 10 of 64^3 volumes) and 128 (128^3 volumes) are far beyond this machine.


def _batch(case: Case, spec: DataSpec) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {m: torch.rand(case.batch, c, *case.shape, generator=g) * 2 - 1
            for m, c in zip(spec.modalities, spec.channels, strict=True)}  # fmt: skip


def _copy(base: torch.nn.Module, case: Case, channels_last: bool) -> torch.nn.Module:
    """A copy of ``base`` with its weights, in channels-last format when asked.

    phvae through its own option (its inputs then follow the model's format where they enter,
    as in a cell), the other models by ``Module.to``; their inputs are converted here.
    """
    if channels_last and isinstance(base, PHVAE):
        config = merge_config(case.cls.configs[case.config], {**case.overrides, "channels_last": True})
        model = case.cls(config, case.spec())
        model.load_state_dict(base.state_dict())
        return model.train()
    model = copy.deepcopy(base).train()
    if channels_last:
        model.to(memory_format=torch.channels_last if len(case.shape) == 2 else torch.channels_last_3d)
    return model


class _Variant:
    """One variant of a case: its model, optimisers, inputs and meters."""

    def __init__(self, name: str, base: torch.nn.Module, case: Case, batch: dict[str, torch.Tensor]) -> None:
        self.name = name
        self.case = case
        self.model = _copy(base, case, channels_last="channels_last" in name)
        self.applied: list[str] = []
        if "channels_last" in name:
            fmt = torch.channels_last if len(case.shape) == 2 else torch.channels_last_3d
            batch = {k: v.contiguous(memory_format=fmt) for k, v in batch.items()}
            how = "config channels_last: true" if isinstance(base, PHVAE) else "Module.to"
            self.applied.append(f"model and inputs {str(fmt).removeprefix('torch.')} ({how})")
        if "compile" in name:
            self.applied.append(
                f"torch.compile(inductor, fallback_random) of {', '.join(compile_children(self.model))}"
            )
        self.batch = batch
        self.stages = []
        for stage in self.model.stages():
            params = [p for p in stage.parameters() if p.requires_grad]
            self.stages.append((stage, params, build_optimizer(stage.optimizer, params)))
        self.train_meter = ThroughputMeter("cpu", skip_first=2)
        self.infer_meter = ThroughputMeter("cpu", skip_first=2)

    def losses(self, seed: int = 1) -> list[torch.Tensor]:
        """One training step (every stage once); returns each stage's loss."""
        out = []
        for stage, params, optimizer in self.stages:
            for module in stage.frozen() if stage.frozen else []:
                module.eval()
            optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            loss = stage.loss(self.batch)["loss"]
            loss.backward()
            if stage.grad_clip is not None:
                groups = stage.clip_groups() if stage.clip_groups else [params]
                for group in groups:
                    torch.nn.utils.clip_grad_norm_(list(group), stage.grad_clip)
            optimizer.step()
            out.append(loss.detach())
        return out

    def infer(self) -> torch.Tensor:
        """The model's first capability at its default temperature: translation A2B or reconstruction."""
        torch.manual_seed(2)
        if isinstance(self.model, PHVAE):
            return self.model.translate(self.batch["A"], "A", "B")
        return self.model.reconstruct(self.batch["image"], "image")

    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def timed(self, what: str) -> None:
        meter = self.train_meter if what == "train" else self.infer_meter
        with meter.measure(self.case.batch):
            if what == "train":
                self.losses(seed=3)
            else:
                self.infer()


def _max_diff(a: list[torch.Tensor] | torch.Tensor, b: list[torch.Tensor] | torch.Tensor) -> float:
    pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
    return max(float((x.float() - y.float()).abs().max()) for x, y in pairs)


def _numerics(variants: dict[str, _Variant]) -> dict[str, dict[str, float]]:
    """Differences from eager at the initial weights: inference output, first losses, gradients (relative)."""
    out: dict[str, dict[str, float]] = {}
    ref_grads: dict[str, torch.Tensor] = {}
    ref_state: dict[str, torch.Tensor] = {}
    outputs, first_s = {}, {}
    for name, v in variants.items():
        start = time.perf_counter()
        with torch.no_grad():
            outputs[name] = v.infer()
        first_s[name] = time.perf_counter() - start
    for name, v in variants.items():
        start = time.perf_counter()
        losses = v.losses(seed=1)  # the first step from the same weights; its gradients are those of the last stage
        first_s[name] += time.perf_counter() - start
        if name == "eager":
            ref_losses, ref_grads = losses, v.grads()
        grads = v.grads()
        state = {k: t.detach().float().clone() for k, t in v.model.named_buffers() if t.is_floating_point()}
        if name == "eager":
            ref_state = state
        scale = max(float(g.abs().max()) for g in ref_grads.values())
        out[name] = {
            "inference_max_abs_diff": _max_diff(outputs[name], outputs["eager"]),
            "loss_max_abs_diff": _max_diff(losses, ref_losses),
            "grad_max_diff_rel": max(float((grads[k] - g).abs().max()) for k, g in ref_grads.items()) / scale,
            # The first inference call and training step, compilation included (an empty inductor cache).
            "first_calls_s": first_s[name],
            # Buffers (EMA codebooks, batch-norm statistics) after that step, each tensor's largest difference
            # relative to its largest entry: a wrong update shows here, not in the losses. (Not the weights:
            # Adam's and Adamax's first step is +-lr wherever a gradient is not 0, so a gradient that is 0 up to
            # rounding moves a weight by lr either way.)
            "buffers_after_step_max_diff_rel": max(
                (float((state[k] - t).abs().max()) / max(float(t.abs().max()), 1e-12) for k, t in ref_state.items()),
                default=0.0,
            ),
        }
        differences = (out[name]["inference_max_abs_diff"], out[name]["loss_max_abs_diff"])
        out[name]["equivalent"] = max(differences) <= TOLERANCE and out[name]["buffers_after_step_max_diff_rel"] <= 1e-4
    return out


def _measure(case: Case, names: tuple[str, ...], rounds: int) -> dict[str, Any]:
    torch._dynamo.reset()  # no compiled code or recompilation budget carried over from another case
    torch.manual_seed(0)
    spec = case.spec()
    base = case.cls(merge_config(case.cls.configs[case.config], case.overrides), spec)
    batch = _batch(case, spec)
    # A higher recompilation budget (every compiled module shares the code object nn.Module.compile wraps,
    # and train/eval switches add entries), and an error instead of a silent fall-back to eager past it.
    dynamo_limits = torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True)
    with inductor_config.patch(fallback_random=True), dynamo_limits:
        variants = {name: _Variant(name, base, case, batch) for name in names}
        numerics = _numerics(variants)
        for _ in range(rounds + 2):  # two warm-up rounds, left out by the meters
            for v in variants.values():  # interleaved: a change of the machine's load falls on every variant
                v.timed("train")
                v.timed("infer")
    default, why = DEFAULTS[case.cls.name]
    result: dict[str, Any] = {"case": case.id, "note": case.note, "default_on_cpu": default, "why": why}
    eager_train = variants["eager"].train_meter.seconds / variants["eager"].train_meter.intervals
    eager_infer = variants["eager"].infer_meter.seconds / variants["eager"].infer_meter.intervals
    for name, v in variants.items():
        train_s = v.train_meter.seconds / v.train_meter.intervals
        infer_s = v.infer_meter.seconds / v.infer_meter.intervals
        result[name] = {
            "applied": v.applied or ["nothing (today's CPU path)"],
            "train_step_s": train_s,
            "infer_s": infer_s,
            "train_speedup": eager_train / train_s,
            "infer_speedup": eager_infer / infer_s,
            **numerics[name],
        }
    equivalent = [n for n in names if n != "eager" and result[n]["equivalent"]]
    best = max(equivalent, key=lambda n: result[n]["train_speedup"], default=None)
    fastest = max(names, key=lambda n: result[n]["train_speedup"])
    result["default_train_speedup"] = result[default]["train_speedup"] if default in result else None
    result["best_equivalent"] = best
    result["best_equivalent_train_speedup"] = result[best]["train_speedup"] if best else 1.0
    result["fastest_any"] = (fastest, result[fastest]["train_speedup"])
    if case.cls.name in TARGET_MODELS:
        result["target_train_speedup"] = TARGET
        result["missed_target_by"] = max(0.0, TARGET - result["best_equivalent_train_speedup"])
    result["protocol"] = (
        f"1 thread, {rounds} interleaved rounds after 2 warm-up rounds, mean per call (ThroughputMeter)"
    )
    return result


def _report(benchmark, result: dict[str, Any], names: tuple[str, ...], load_before: tuple[float, ...]) -> None:
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    benchmark.extra_info.update(result)
    parts = []
    for n in names:
        r = result[n]
        parts.append(
            f"{n}: train {r['train_speedup']:.2f}x infer {r['infer_speedup']:.2f}x "
            f"(diff out {r['inference_max_abs_diff']:.1e} loss {r['loss_max_abs_diff']:.1e} "
            f"grad {r['grad_max_diff_rel']:.1e} rel, buffers {r['buffers_after_step_max_diff_rel']:.1e} rel, "
            f"first calls {r['first_calls_s']:.1f} s)"
        )
    eager = result["eager"]
    print(
        f"\n{result['case']} {result['note']}: eager step {eager['train_step_s'] * 1e3:.1f} ms, "
        f"infer {eager['infer_s'] * 1e3:.1f} ms; default {result['default_on_cpu']}; " + "; ".join(parts)
        + (f"; missed {TARGET}x by {result['missed_target_by']:.2f}" if "missed_target_by" in result else "")
        + f"; load {load_before} -> {result['load_after']}"
    )  # fmt: skip


def _run(benchmark, case: Case, names: tuple[str, ...], rounds: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    result = benchmark.pedantic(_measure, args=(case, names, rounds), rounds=1, iterations=1)
    _report(benchmark, result, names, load_before)
    return result


@pytest.mark.benchmark(group="cpu-compile-tiny")
@pytest.mark.parametrize("case", TINY, ids=lambda c: c.id)
def test_tiny_config(benchmark, case: Case) -> None:
    """The quickstart's configs: channels-last always, compilation with --benchmark-enable."""
    names = VARIANTS if not benchmark.disabled else ("eager", "channels_last")
    result = _run(benchmark, case, names, rounds=20 if not benchmark.disabled else 3)
    # Nothing is on by default that is not within TOLERANCE of the eager outputs.
    assert result[result["default_on_cpu"]]["equivalent"]


@pytest.mark.benchmark(group="cpu-compile-source")
@pytest.mark.parametrize("case", SOURCE, ids=lambda c: c.id)
def test_source_config(benchmark, case: Case) -> None:
    """The sources' configs (reduced where said), every variant."""
    if benchmark.disabled:
        pytest.skip("source configs with compilation (minutes each) run with --benchmark-enable")
    names = ("eager", "channels_last") if case.id in NOT_COMPILED else VARIANTS
    result = _run(benchmark, case, names, rounds=5)
    if case.id in NOT_COMPILED:
        benchmark.extra_info["compile"] = f"not measured: {NOT_COMPILED[case.id]}"
    assert result["eager"]["equivalent"]


# Source configs whose compiled variants are not measured, and why.
NOT_COMPILED = {
    "vqvae-seed003-hipmri": "inductor fails to compile it (test_compile_failure_vqvae_seed003)",
    "vqvae2-seed002-oasis": "its EMA codebooks compile wrongly (test_inductor_compiles_the_ema_update_as_eager, "
    "as at the tiny configs); compiling its quantisers for training and evaluation in two memory formats takes "
    "longer than this benchmark should",
    "pixelcnn-seed002-oasis": "its VQ-VAE stage is vqvae2-seed002-oasis (EMA codebooks compile wrongly); "
    "compiling its three stages would take longer still",
}


def test_compile_failure_vqvae_seed003(benchmark) -> None:
    """Record whether inductor still fails to compile the seed003 VQ-VAE's training step (as on torch 2.14.1)."""
    if benchmark.disabled:
        pytest.skip("compiles the seed003 VQ-VAE (about a minute): runs with --benchmark-enable")
    torch._dynamo.reset()
    case = SOURCE[0]
    spec = case.spec()
    model = case.cls(dict(case.cls.configs[case.config]), spec).train()
    compile_children(model)
    try:
        model.loss(_batch(case, spec))["loss"].backward()
        outcome = "compiles"
    except Exception as exc:  # noqa: BLE001 - the outcome is recorded, whatever inductor raises
        outcome = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
    benchmark.extra_info.update(case=case.id, torch=torch.__version__, outcome=outcome)
    print(f"\n{case.id} under torch.compile on the CPU (torch {torch.__version__}): {outcome}")


@pytest.mark.xfail(strict=True, reason="inductor (torch 2.14.1, CPU) drops add_'s alpha after a matmul")
def test_inductor_compiles_the_ema_update_as_eager() -> None:
    """Why compilation stays off for the EMA VQ models: their codebook update
    ``avg.mul_(d).add_(onehot.T @ x, alpha=1-d)`` (``vq_layers.VectorQuantizerEMA._learn``) is compiled as if
    ``alpha`` were 1 (checked by hand on torch 2.14.1: the compiled result equals ``0.99 * avg + sums`` within
    5e-7 and differs from eager by 4.8). Strict: when a torch release fixes it this test passes, fails the run,
    and the VQ models' measurements above are worth redoing."""
    torch._dynamo.reset()

    def ema(avg: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        sums = torch.nn.functional.one_hot(idx, 16).to(x.dtype).t() @ x
        return avg.mul_(0.99).add_(sums, alpha=0.01)

    g = torch.Generator().manual_seed(0)
    x, idx, avg = (
        torch.randn(32, 8, generator=g),
        torch.randint(0, 16, (32,), generator=g),
        torch.randn(16, 8, generator=g),
    )
    compiled: Callable[..., torch.Tensor] = torch.compile(ema, backend="inductor")
    torch.testing.assert_close(compiled(avg.clone(), x, idx), ema(avg.clone(), x, idx))
