"""The engine's training loop: models declare stages, the engine runs them.

The loop owns device placement, precision (autocast, with a gradient scaler for fp16 on
CUDA), gradient clipping, update skipping with a counter and a cap on consecutive skips,
EMA weights, seeding, periodic atomic checkpoints, resume after a kill, progress (console bar and the file
``bench status`` reads, in :mod:`bench_core.progress`) and the loss curves stored for the report.

Skipped updates and the gradient scaler. An update is skipped when a pass's loss is
non-finite, when the gradients are non-finite, or when their norm reaches the stage's
``skip_threshold``. With fp16 (``precision: amp`` on CUDA, or anywhere with
``$BENCH_FORCE_AMP``) the loss is scaled by ``torch.amp.GradScaler`` and every update that
got as far as ``unscale_`` ends in ``scaler.update()``, applied or not, as torch's contract
requires: non-finite gradients back the scale off, a threshold skip (finite gradients)
counts as a clean step towards the scale's growth. A non-finite loss is caught before
backward, so the scaler has nothing to settle and its scale stays (the forward pass does not
depend on it). Non-finite gradients while the scale is above ``MIN_GRAD_SCALE`` are the
scaler probing its range (it starts at 65536 and doubles after every ``growth_interval``
clean updates until an overflow), so they are counted as ``overflow_skipped`` and neither
count towards nor reset ``max_consecutive_skips``; at or below that scale the gradients
overflow without amplification, so they count as ordinary skips and a run whose gradients
stay non-finite still fails after the scale has backed off to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench_core import distributed as ddp
from bench_core.api import BenchError, OptimizerSpec, TrainingStage
from bench_core.checkpoints import load_train_state, save_train_state, save_weights
from bench_core.progress import StageProgress, progress_file
from bench_core.timing import ThroughputMeter
from bench_core.torchutil import (
    autocast,
    batch_len,
    cuda_devices,
    fp16_amp,
    peak_memory,
    rng_state,
    set_rng_state,
    to_device,
)

MAX_CURVE_POINTS = 200
# Overflows at or below this loss scale are the model's, not the scaler's (torch's docs: a
# scale under 1 means something is likely wrong), so they count towards the skip cap.
MIN_GRAD_SCALE = 1.0


class TrainingDiverged(BenchError):
    """The loss or gradients stayed non-finite (or over the skip threshold) too long."""


@dataclass
class TrainSettings:
    """How the engine runs one stage (resolved from the suite and the stage's defaults).

    ``precision``: ``fp32``; ``bf16`` (bf16 autocast, no scaler); ``amp``, which is fp16
    autocast with a ``torch.amp.GradScaler`` on CUDA and falls back to bf16 autocast without a
    scaler elsewhere. Setting the environment variable ``BENCH_FORCE_AMP=1`` makes ``amp``
    take the CUDA path on any device: fp16 autocast (in training and evaluation; torch's CPU
    autocast runs convolutions and matmuls in fp16) and a real scaler for that device, so the
    scaler logic can be tested on CPU. It is a testing switch: the checkpoint store does not
    key weights by it. ``grad_scale_init`` and ``grad_scale_growth_interval`` configure the
    scaler (torch's defaults); a resumed stage takes both from its saved state.
    """

    device: torch.device
    precision: str = "fp32"  # fp32 | amp | bf16
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
    grad_scale_init: float = 2.0**16
    grad_scale_growth_interval: int = 2000  # clean updates before the scale doubles


@dataclass
class StageReport:
    """What happened in one stage: steps, skips, time, throughput and curves.

    ``skipped`` counts updates not applied for a non-finite loss, non-finite gradients or a
    norm over the skip threshold; ``overflow_skipped`` (disjoint from it) the updates the fp16
    gradient scaler skipped while backing off its scale (see the module docstring). ``grad_scale``
    is the scaler's loss scale at the end of the stage and ``grad_scale_min`` the lowest it
    held during the stage (before a resume included); both are None without a scaler.
    """

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
    overflow_skipped: int = 0
    grad_scale: float | None = None
    grad_scale_min: float | None = None
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start mid-epoch, so resume replays exactly.

    With ``shard = (rank, world)`` and ``world > 1`` each rank takes every ``world``-th index
    of the same permutation (truncated to a multiple of ``world`` so ranks run the same number
    of steps), as torch's DistributedSampler does.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0, shard: tuple[int, int] = (0, 1)):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world = shard

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
    plan = _plan(stage, settings, len(dataset))  # type: ignore[arg-type]
    run = _StageRun(model, stage, settings, state_path, plan)
    run.resume()
    curve = _Curve(plan.total, run.curve_points)
    run.train_mode()
    meter = ThroughputMeter(settings.device, skip_first=1)  # the first update of this process pays for warm-up
    started = time.perf_counter()
    main = ddp.is_main()
    bar = f"{settings.label} {stage.name}".strip() if settings.progress and main else None
    shown = StageProgress(stage.name, plan.total, run.step, bar_label=bar, file=progress_file() if main else None)
    with shown as advance:
        while run.step < plan.total:
            for group in _micro_batches(run.loader(dataset), plan):
                items = sum(batch_len(b) for b in group)
                with meter.measure(items * plan.world):
                    outcome, values, loss = run.update(group, items)
                run.count(outcome, loss)
                if outcome == "applied":
                    curve.add(run.step, values)
                advance(values.get("loss", float("nan")))
                if run.between_updates():
                    break
    run.finish()
    return run.report(meter, started)


@dataclass(frozen=True)
class _Plan:
    """How a stage runs: items per pass and per update, updates per epoch and in all, ranks."""

    batch_size: int
    accumulate: int
    n: int
    shard: tuple[int, int]  # (rank, world)
    per_update: int
    drop_last: bool
    per_epoch: int
    total: int
    validate_every: int | None

    @property
    def world(self) -> int:
        return self.shard[1]


def _plan(stage: TrainingStage, settings: TrainSettings, n: int) -> _Plan:
    """The stage's plan from the settings (the suite's budget) and the stage's own defaults."""
    batch_size = settings.batch_size or stage.batch_size
    accumulate = settings.accumulate or stage.accumulate
    if accumulate < 1:
        raise BenchError(f"stage {stage.name!r}: accumulate must be at least 1, got {accumulate}")
    world, rank = ddp.world_size(), ddp.rank()
    if n // world == 0:
        raise BenchError(f"stage {stage.name!r}: the training split is empty (or smaller than {world} ranks)")
    n_local = n // world
    per_update = batch_size * accumulate
    # Full updates only, unless the split is smaller than one update: then one update of all of it.
    drop_last = n_local > per_update
    per_epoch = n_local // per_update if drop_last else 1
    total = settings.steps or (settings.epochs * per_epoch if settings.epochs else stage.default_steps)
    every = settings.validate_every or (settings.validate_every_epochs or 0) * per_epoch or None
    return _Plan(batch_size, accumulate, n, (rank, world), per_update, drop_last, per_epoch, total, every)


def _micro_batches(loader: DataLoader, plan: _Plan) -> Iterator[list[dict[str, Any]]]:
    """The loader's batches in groups of ``accumulate`` (one group per update)."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == plan.accumulate:
            yield group
            group = []
    if group and not plan.drop_last:
        yield group


class _StageRun:
    """One stage in training: optimiser, gradient scaler, EMA, counters and curve; saved and resumed whole."""

    def __init__(
        self, model: torch.nn.Module, stage: TrainingStage, settings: TrainSettings, state_path: Path, plan: _Plan
    ) -> None:
        self.model, self.stage, self.settings, self.state_path, self.plan = model, stage, settings, state_path, plan
        self.augment = settings.augment if stage.augment and settings.augment else None
        self.frozen = list(stage.frozen() if stage.frozen else [])
        self.frozen_grad = [(p, p.requires_grad) for m in self.frozen for p in m.parameters()]
        for p, _ in self.frozen_grad:
            p.requires_grad_(False)
        self.params = [p for p in stage.parameters() if p.requires_grad]
        if not self.params:
            raise BenchError(f"stage {stage.name!r} has no trainable parameters")
        self.optimizer = build_optimizer(stage.optimizer, self.params)
        self.scaler = torch.amp.GradScaler(
            settings.device.type,
            init_scale=settings.grad_scale_init,
            growth_interval=settings.grad_scale_growth_interval,
            enabled=fp16_amp(settings.device, settings.precision),
        )
        self.ema = [p.detach().clone() for p in self.params] if stage.ema_decay else None
        self.aug_gen = torch.Generator().manual_seed(settings.seed * 7919 + 1)
        self.step = self.skipped = self.overflow_skipped = self.consecutive = self.resumed_from = 0
        self.curve_points: list[dict[str, float]] = []
        self.scale_min: float | None = None  # the lowest loss scale of the stage (before a resume included)
        self.best: dict[str, Any] = {"score": None, "step": None}

    def resume(self) -> None:
        """Continue from the saved state of this stage, if any; else start every rank from rank 0's weights."""
        saved = load_train_state(self.state_path)
        if saved is not None and saved.get("stage") == self.stage.name:
            self._load(saved)
        else:
            ddp.broadcast_module(self.model)  # every rank starts from rank 0's initialisation
            if self.settings.initial_optimizer is not None:
                _continue_optimizer(self.optimizer, self.settings.initial_optimizer, self.stage.name)
        self.resumed_from = self.step
        saved_min = math.inf if self.scale_min is None else self.scale_min
        self.scale_min = min(self.scaler.get_scale(), saved_min) if self.scaler.is_enabled() else None
        if self.settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.settings.device)

    def _load(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        # A state saved without a scaler (CPU, or without $BENCH_FORCE_AMP) is empty: start it afresh.
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.overflow_skipped, self.scale_min = saved.get("overflow_skipped", 0), saved.get("grad_scale_min")
        if self.ema is not None and saved.get("ema") is not None:
            for e, s in zip(self.ema, saved["ema"], strict=True):
                e.copy_(s)
        self.step, self.skipped, self.curve_points[:] = saved["step"], saved["skipped"], saved["curve"]
        self.best = saved.get("best", self.best)
        if "augment_rng" in saved:
            self.aug_gen.set_state(saved["augment_rng"])
        set_rng_state(saved["rng"])

    def checkpoint(self) -> None:
        """Rank 0: save everything a resume needs."""
        if not ddp.is_main():
            return
        save_train_state(
            self.state_path,
            {
                "stage": self.stage.name, "step": self.step, "skipped": self.skipped, "curve": self.curve_points,
                "overflow_skipped": self.overflow_skipped, "grad_scale_min": self.scale_min,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema, "rng": rng_state(),
                "augment_rng": self.aug_gen.get_state(), "best": self.best,
            },
        )  # fmt: skip

    def train_mode(self) -> None:
        """The model in train mode, the stage's frozen modules in eval mode."""
        self.model.train()
        for m in self.frozen:
            m.eval()

    def validate(self) -> None:
        """Score the current (EMA) weights on rank 0; keep them when they beat the best so far."""
        settings = self.settings
        if settings.validate is None or not ddp.is_main():
            return
        with _weights_of(self.params, self.ema), torch.random.fork_rng(devices=cuda_devices(settings.device)):
            self.model.eval()
            with torch.no_grad():
                value = float(settings.validate())
            self.train_mode()
            self.curve_points.append({"step": self.step, settings.validate_key: value})
            best = self.best["score"]
            better = best is None or (value > best) == settings.validate_higher_is_better
            if math.isfinite(value) and better and value != best:
                self.best.update(score=value, step=self.step)
                assert settings.best_path is not None
                save_weights(self.model, settings.best_path.parent, None, name=settings.best_path.name)

    def loader(self, dataset: Dataset) -> DataLoader:
        """The batches of the current epoch from the current step on (a resume starts mid-epoch)."""
        plan = self.plan
        epoch, offset = divmod(self.step, plan.per_epoch)
        return DataLoader(
            dataset,
            batch_size=plan.batch_size,
            sampler=EpochSampler(plan.n, self.settings.seed, epoch, offset * plan.per_update, plan.shard),
            drop_last=plan.drop_last,
            num_workers=self.settings.num_workers,
            pin_memory=self.settings.device.type == "cuda",
            persistent_workers=False,
        )

    def update(self, group: list[dict[str, Any]], items: int) -> tuple[str, dict[str, float], torch.Tensor]:
        """One optimiser update from the passes of ``group``: "applied", "skipped" or "overflow"."""
        self.optimizer.zero_grad(set_to_none=True)
        values: dict[str, float] = {}
        for batch in group:
            loss, finite = self._backward(batch, items, values)
            if not finite:
                return "skipped", values, loss  # before unscale_: nothing for the scaler to settle
        ddp.average_gradients(self.params)
        self.scaler.unscale_(self.optimizer)
        norm = _clip(self.stage, self.params)
        finite = bool(torch.isfinite(norm))  # the same on every rank: the gradients were averaged
        threshold = self.stage.skip_threshold
        if finite and (threshold is None or float(norm) < threshold):
            outcome = "applied"
            self.scaler.step(self.optimizer)
        elif not finite and self.scaler.is_enabled() and self.scaler.get_scale() > MIN_GRAD_SCALE:
            outcome = "overflow"
        else:
            outcome = "skipped"
        # Applied or not: after unscale_ the scaler must update (backing off on non-finite
        # gradients), or the next unscale_ raises.
        self.scaler.update()
        if outcome == "applied" and self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params, strict=True):
                    e.lerp_(p.detach(), 1.0 - self.stage.ema_decay)
        return outcome, values, loss

    def _backward(self, batch: dict[str, Any], items: int, values: dict[str, float]) -> tuple[torch.Tensor, bool]:
        """One forward/backward pass, weighted by its share of the update's items; whether its loss was finite."""
        settings = self.settings
        batch = to_device(batch, settings.device)
        if self.augment is not None:
            batch = self.augment(batch, self.aug_gen)
        with autocast(settings.device, settings.precision):
            out = self.stage.loss(batch)
        loss = out["loss"]
        if not ddp.all_true(bool(torch.isfinite(loss)), settings.device):  # all ranks take the same branch
            return loss, False
        # Weighted by the pass's share of the update's items: the gradient of one big batch.
        share = batch_len(batch) / items
        self.scaler.scale(loss * share if self.plan.accumulate > 1 else loss).backward()
        for k, v in out.items():
            if torch.is_tensor(v) and v.numel() == 1:
                values[k] = values.get(k, 0.0) + float(v.detach()) * share
        return loss, True

    def count(self, outcome: str, loss: torch.Tensor) -> None:
        """Count an update (applied, skipped or a scaler overflow); fail after too many consecutive skips."""
        if self.scale_min is not None:
            self.scale_min = min(self.scale_min, self.scaler.get_scale())
        if outcome == "applied":
            self.consecutive = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
        if outcome == "overflow":
            self.overflow_skipped += 1
        elif outcome == "skipped":
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive > self.settings.max_consecutive_skips:
                scale = f"; loss scale {self.scaler.get_scale():g}" if self.scaler.is_enabled() else ""
                threshold = self.stage.skip_threshold
                raise TrainingDiverged(
                    f"stage {self.stage.name!r}: loss {float(loss.detach()):.4g} at step {self.step}; "
                    f"{self.consecutive} consecutive updates skipped (non-finite loss or gradient"
                    f"{' or norm over ' + str(threshold) if threshold else ''}){scale}"
                )
        self.step += 1

    def between_updates(self) -> bool:
        """Validate and checkpoint when due; whether the stage's budget is spent."""
        step, total = self.step, self.plan.total
        if self.plan.validate_every and step % self.plan.validate_every == 0 and step < total:
            self.validate()
        if step % self.settings.checkpoint_every == 0 and step < total:
            self.checkpoint()
        return step >= total

    def finish(self) -> None:
        """Validate the final weights, save the state, and leave the model as evaluation should see it."""
        if self.step > self.resumed_from or self.best["score"] is None:
            self.validate()
        self.checkpoint()
        ddp.broadcast_module(self.model)  # buffers (batch-norm statistics) follow rank 0
        for p, flag in self.frozen_grad:
            p.requires_grad_(flag)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params, strict=True):
                    p.copy_(e)

    def report(self, meter: ThroughputMeter, started: float) -> StageReport:
        """What happened in the stage (time counted from ``started`` up to now)."""
        peak_mb, measure = peak_memory(self.settings.device)
        return StageReport(
            peak_memory_mb=peak_mb, memory_measure=measure, stage=self.stage.name, steps=self.step,
            skipped=self.skipped, seconds=time.perf_counter() - started, images_per_second=meter.per_second,
            timing_protocol=meter.protocol, curve=self.curve_points, resumed_from=self.resumed_from,
            best_score=self.best["score"], best_step=self.best["step"], overflow_skipped=self.overflow_skipped,
            grad_scale=self.scaler.get_scale() if self.scaler.is_enabled() else None,
            grad_scale_min=self.scale_min, optimizer_state=self.optimizer.state_dict(),
        )  # fmt: skip


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


def _clip(stage: TrainingStage, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Clip gradients as the stage asks; return the total norm before clipping (for skipping)."""
    limit = stage.grad_clip if stage.grad_clip is not None else math.inf
    if stage.clip_groups is None:
        return torch.nn.utils.clip_grad_norm_(params, limit)
    norms = [torch.nn.utils.clip_grad_norm_(list(group), limit) for group in stage.clip_groups()]
    return torch.linalg.vector_norm(torch.stack(norms))
