"""The engine's training loop: models declare stages, the engine runs them.

The loop owns device placement, precision (autocast, with a gradient scaler for fp16 on
CUDA), gradient clipping, update skipping with a counter and a cap on consecutive skips,
EMA weights, seeding, periodic atomic checkpoints, resume after a kill, progress bars
and the loss curves stored for the report.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench_core import distributed as ddp
from bench_core.api import BenchError, OptimizerSpec, TrainingStage
from bench_core.checkpoints import load_train_state, save_train_state, save_weights
from bench_core.timing import ThroughputMeter

MAX_CURVE_POINTS = 200


class TrainingDiverged(BenchError):
    """The loss or gradients stayed non-finite (or over the skip threshold) too long."""


@dataclass
class TrainSettings:
    """How the engine runs one stage (resolved from the suite and the stage's defaults)."""

    device: torch.device
    precision: str = "fp32"  # fp32 | amp (fp16 + scaler on CUDA) | bf16
    seed: int = 0
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    checkpoint_every: int = 200
    max_consecutive_skips: int = 10
    num_workers: int = 0
    progress: bool = True
    label: str = ""
    accumulate: int | None = None  # passes per update; None: the stage's own
    augment: Callable[[dict[str, Any], torch.Generator], dict[str, Any]] | None = None
    validate: Callable[[], float] | None = None  # higher is better; run on rank 0 in eval mode
    validate_every: int | None = None  # steps between validations (and always at the end)
    validate_every_epochs: int | None = None  # or epochs between validations
    validate_key: str = "validation"  # curve key of the validation value
    validate_higher_is_better: bool = True
    best_path: Path | None = None  # where the best-scoring weights are saved
    initial_optimizer: dict[str, Any] | None = None  # optimiser state to continue from


@dataclass
class StageReport:
    """What happened in one stage: steps, skips, time, throughput and curves."""

    stage: str
    steps: int
    skipped: int
    seconds: float
    images_per_second: float | None
    curve: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    peak_memory_mb: float | None = None
    memory_measure: str = ""
    best_score: float | None = None
    best_step: int | None = None
    timing_protocol: str = ""
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory so far in MiB and what was measured (CUDA allocator, or process peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated during the stage"
    import resource

    # ru_maxrss is KiB on Linux: the process's peak resident set, so an upper bound for the stage.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss) up to stage end"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask for deterministic kernels where they exist."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("suite asks for device: cuda but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start mid-epoch, so resume replays exactly.

    With ``world > 1`` each rank takes every ``world``-th index of the same permutation
    (truncated to a multiple of ``world`` so ranks run the same number of steps), as
    torch's DistributedSampler does.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.n // self.world * self.world]
        return iter(perm[self.rank :: self.world][self.start :].tolist())

    def __len__(self) -> int:
        return self.n // self.world - self.start


def build_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimiser named by ``spec``."""
    kinds = {
        "adam": lambda: torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay),
        "adamax": lambda: torch.optim.Adamax(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=spec.lr, momentum=spec.betas[0], weight_decay=spec.weight_decay),
    }
    if spec.name not in kinds:
        raise BenchError(f"unknown optimizer {spec.name!r}; expected one of {', '.join(kinds)}")
    return kinds[spec.name]()


def compile_children(model: torch.nn.Module, backend: str = "inductor") -> list[str]:
    """``torch.compile`` each direct submodule in place; return the names compiled.

    Submodules rather than the model: stage losses and capability methods call the
    submodules (encoder, quantiser, priors), not ``model.forward``, so compiling the
    children is what makes those calls compiled.
    """
    names = []
    for name, child in model.named_children():
        child.compile(backend=backend)
        names.append(name)
    return names


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for ``precision`` (fp32 disables it)."""
    if precision == "amp" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision in ("bf16", "amp"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Curve:
    """Running means of the loss terms, flushed every ``every`` steps as one curve point."""

    def __init__(self, total_steps: int, points: list[dict[str, float]]):
        self.every = max(1, total_steps // MAX_CURVE_POINTS)
        self.points = points
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if step % self.every == 0:
            self.points.append({"step": step, **{k: v / self._count for k, v in self._sums.items()}})
            self._sums, self._count = {}, 0


def run_stage(
    model: torch.nn.Module,
    stage: TrainingStage,
    dataset: Dataset,
    settings: TrainSettings,
    state_path: Path,
) -> StageReport:
    """Train ``model`` through one stage, resuming from ``state_path`` if it holds this stage.

    A step is one optimiser update of ``accumulate`` forward/backward passes of
    ``batch_size`` items. With ``settings.validate`` the model is scored every
    ``validate_every`` steps and at the end, and the best-scoring weights are saved to
    ``settings.best_path``; validation runs under a forked RNG, so it never changes the
    training trajectory (the last weights are the same with or without it).
    """
    device = settings.device
    batch_size = settings.batch_size or stage.batch_size
    accumulate = settings.accumulate or stage.accumulate
    if accumulate < 1:
        raise BenchError(f"stage {stage.name!r}: accumulate must be at least 1, got {accumulate}")
    n = len(dataset)  # type: ignore[arg-type]
    world, rank = ddp.world_size(), ddp.rank()
    if n // world == 0:
        raise BenchError(f"stage {stage.name!r}: the training split is empty (or smaller than {world} ranks)")
    n_local = n // world
    per_update = batch_size * accumulate
    # Full updates only, unless the split is smaller than one update: then one update of all of it.
    drop_last = n_local > per_update
    per_epoch = n_local // per_update if drop_last else 1
    total = settings.steps or (settings.epochs * per_epoch if settings.epochs else stage.default_steps)
    augment = settings.augment if stage.augment and settings.augment else None
    every = settings.validate_every or (settings.validate_every_epochs or 0) * per_epoch or None

    frozen = list(stage.frozen() if stage.frozen else [])
    frozen_grad = [(p, p.requires_grad) for m in frozen for p in m.parameters()]
    for p, _ in frozen_grad:
        p.requires_grad_(False)
    params = [p for p in stage.parameters() if p.requires_grad]
    if not params:
        raise BenchError(f"stage {stage.name!r} has no trainable parameters")
    optimizer = build_optimizer(stage.optimizer, params)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and settings.precision == "amp")
    ema = [p.detach().clone() for p in params] if stage.ema_decay else None
    aug_gen = torch.Generator().manual_seed(settings.seed * 7919 + 1)

    step, skipped, curve_points = 0, 0, []
    best: dict[str, Any] = {"score": None, "step": None}
    saved = load_train_state(state_path)
    if saved is not None and saved.get("stage") == stage.name:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None and saved.get("ema") is not None:
            for e, s in zip(ema, saved["ema"], strict=True):
                e.copy_(s)
        step, skipped, curve_points = saved["step"], saved["skipped"], saved["curve"]
        best = saved.get("best", best)
        if "augment_rng" in saved:
            aug_gen.set_state(saved["augment_rng"])
        _set_rng_state(saved["rng"])
    else:
        ddp.broadcast_module(model)  # every rank starts from rank 0's initialisation
        if settings.initial_optimizer is not None:
            _continue_optimizer(optimizer, settings.initial_optimizer, stage.name)
    resumed_from = step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def checkpoint() -> None:
        if not ddp.is_main():
            return
        save_train_state(
            state_path,
            {
                "stage": stage.name, "step": step, "skipped": skipped, "curve": curve_points,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema, "rng": _rng_state(), "augment_rng": aug_gen.get_state(), "best": best,
            },
        )  # fmt: skip

    def train_mode() -> None:
        model.train()
        for m in frozen:
            m.eval()

    def validate() -> None:
        """Score the current (EMA) weights on rank 0; keep them when they beat the best so far."""
        if settings.validate is None or not ddp.is_main():
            return
        with _weights_of(params, ema), torch.random.fork_rng(devices=_cuda_devices(device)):
            model.eval()
            with torch.no_grad():
                value = float(settings.validate())
            train_mode()
            curve_points.append({"step": step, settings.validate_key: value})
            better = best["score"] is None or (value > best["score"]) == settings.validate_higher_is_better
            if math.isfinite(value) and better and value != best["score"]:
                best.update(score=value, step=step)
                assert settings.best_path is not None
                save_weights(model, settings.best_path.parent, None, name=settings.best_path.name)

    def micro_batches(loader: DataLoader) -> Iterator[list[dict[str, Any]]]:
        group: list[dict[str, Any]] = []
        for batch in loader:
            group.append(batch)
            if len(group) == accumulate:
                yield group
                group = []
        if group and not drop_last:
            yield group

    def update(group: list[dict[str, Any]], items: int) -> tuple[bool, dict[str, float], torch.Tensor]:
        """One optimiser update from the passes of ``group``; False when it was skipped."""
        optimizer.zero_grad(set_to_none=True)
        values: dict[str, float] = {}
        for batch in group:
            batch = to_device(batch, device)
            if augment is not None:
                batch = augment(batch, aug_gen)
            with autocast(device, settings.precision):
                out = stage.loss(batch)
            loss = out["loss"]
            if not ddp.all_true(bool(torch.isfinite(loss)), device):  # all ranks take the same branch
                return False, values, loss
            # Weighted by the pass's share of the update's items: the gradient of one big batch.
            share = _batch_len(batch) / items
            scaler.scale(loss * share if accumulate > 1 else loss).backward()
            for k, v in out.items():
                if torch.is_tensor(v) and v.numel() == 1:
                    values[k] = values.get(k, 0.0) + float(v.detach()) * share
        ddp.average_gradients(params)
        scaler.unscale_(optimizer)
        norm = _clip(stage, params)
        if not bool(torch.isfinite(norm)) or (stage.skip_threshold is not None and float(norm) >= stage.skip_threshold):
            return False, values, loss
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, params, strict=True):
                    e.lerp_(p.detach(), 1.0 - stage.ema_decay)
        return True, values, loss

    curve = _Curve(total, curve_points)
    train_mode()
    consecutive = 0
    meter = ThroughputMeter(device, skip_first=1)  # the first update of this process pays for warm-up
    started = time.perf_counter()
    show = settings.progress and ddp.is_main()
    with _progress(show, f"{settings.label} {stage.name}".strip(), total, step) as advance:
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=EpochSampler(n, settings.seed, epoch, offset * per_update, rank, world),
                drop_last=drop_last,
                num_workers=settings.num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
            for group in micro_batches(loader):
                items = sum(_batch_len(b) for b in group)
                with meter.measure(items * world):
                    ok, values, loss = update(group, items)
                if ok:
                    consecutive = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    consecutive += 1
                    if consecutive > settings.max_consecutive_skips:
                        raise TrainingDiverged(
                            f"stage {stage.name!r}: loss {float(loss.detach()):.4g} at step {step}; "
                            f"{consecutive} consecutive updates skipped (non-finite loss or gradient"
                            f"{' or norm over ' + str(stage.skip_threshold) if stage.skip_threshold else ''})"
                        )
                step += 1
                if ok:
                    curve.add(step, values)
                advance(values.get("loss", float("nan")))
                if every and step % every == 0 and step < total:
                    validate()
                if step % settings.checkpoint_every == 0 and step < total:
                    checkpoint()
                if step >= total:
                    break
    if step > resumed_from or best["score"] is None:
        validate()
    checkpoint()
    ddp.broadcast_module(model)  # buffers (batch-norm statistics) follow rank 0
    for p, flag in frozen_grad:
        p.requires_grad_(flag)
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                p.copy_(e)
    peak_mb, measure = peak_memory(device)
    return StageReport(
        peak_memory_mb=peak_mb,
        memory_measure=measure,
        stage=stage.name,
        steps=step,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        images_per_second=meter.per_second,
        timing_protocol=meter.protocol,
        curve=curve_points,
        resumed_from=resumed_from,
        best_score=best["score"],
        best_step=best["step"],
        optimizer_state=optimizer.state_dict(),
    )


def _continue_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], stage: str) -> None:
    """Load the previous stage's optimiser state, refusing one of another shape."""
    mine = optimizer.state_dict()["param_groups"]
    theirs = state.get("param_groups", [])
    if [len(g["params"]) for g in mine] != [len(g["params"]) for g in theirs]:
        raise BenchError(
            f"stage {stage!r} continues the previous stage's optimiser, but that one optimised "
            f"{sum(len(g['params']) for g in theirs)} parameter tensors and this one "
            f"{sum(len(g['params']) for g in mine)}"
        )
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise BenchError(f"stage {stage!r} cannot continue the previous stage's optimiser: {exc}") from None


class _weights_of:
    """Context in which ``params`` hold the EMA weights (when there are any), restored on exit."""

    def __init__(self, params: list[torch.nn.Parameter], ema: list[torch.Tensor] | None):
        self.params, self.ema = params, ema

    def _swap(self) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for e, p in zip(self.ema, self.params, strict=True):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    def __enter__(self) -> None:
        self._swap()

    def __exit__(self, *exc: object) -> None:
        self._swap()


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _clip(stage: TrainingStage, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Clip gradients as the stage asks; return the total norm before clipping (for skipping)."""
    limit = stage.grad_clip if stage.grad_clip is not None else math.inf
    if stage.clip_groups is None:
        return torch.nn.utils.clip_grad_norm_(params, limit)
    norms = [torch.nn.utils.clip_grad_norm_(list(group), limit) for group in stage.clip_groups()]
    return torch.linalg.vector_norm(torch.stack(norms))


def _batch_len(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if torch.is_tensor(v):
            return int(v.shape[0])
    return 0


class _progress:
    """A rich progress bar for one stage (a no-op when progress is off)."""

    def __init__(self, enabled: bool, description: str, total: int, done: int):
        self.enabled, self.description = enabled, description
        self.total, self.done = total, done

    def __enter__(self):
        if not self.enabled:
            return lambda loss: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4g}"),
            TaskProgressColumn(show_speed=True),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total, completed=self.done, loss=float("nan"))
        return lambda loss: self._bar.update(task, advance=1, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)
