"""How far a training stage has got: a rich bar on the console, and a small JSON file for ``bench status``.

A cell submitted through an executor runs in a background process or on another node, where
no one sees its console; the job sets ``$BENCH_PROGRESS_FILE`` and the training loop keeps
that file current (stage, step, loss; rewritten atomically at most every
``WRITE_EVERY_S`` seconds, and at the start and end of every stage), so ``bench status``
can say how far each running cell is.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_core.fileio import write_atomic

PROGRESS_FILE_VAR = "BENCH_PROGRESS_FILE"
"""Environment variable naming the JSON progress file of the training running in this process."""

WRITE_EVERY_S = 5.0  # one small write per 5 s costs nothing next to a training step; status needs no finer


def progress_file() -> Path | None:
    """The progress file this process should keep current (``None`` when none was asked for)."""
    path = os.environ.get(PROGRESS_FILE_VAR)
    return Path(path) if path else None


def read_progress(path: Path) -> dict[str, Any] | None:
    """The last progress a training loop wrote to ``path`` (``None`` when there is none or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(progress: dict[str, Any]) -> str:
    """One line for ``bench status``: ``stage top_prior step 120/200, loss 0.2379``."""
    text = f"stage {progress.get('stage', '?')} step {progress.get('step', '?')}/{progress.get('steps', '?')}"
    loss = progress.get("loss")
    return text + (f", loss {loss:.4g}" if isinstance(loss, int | float) else "")


class StageProgress:
    """Progress of one training stage: a transient rich bar and/or the progress file.

    ``bar_label`` is the bar's description (``None``: no bar); ``file`` the progress file
    (``None``: none). Used as a context manager that returns ``advance(loss)``, called once
    per optimiser update.
    """

    def __init__(self, stage: str, total: int, done: int, *, bar_label: str | None, file: Path | None) -> None:
        self.stage, self.total, self.done = stage, total, done
        self._bar_label, self._file = bar_label, file
        self._bar: Any = None
        self._written = 0.0
        self._loss: float | None = None

    def __enter__(self) -> Callable[[float], None]:
        if self._bar_label is not None:
            self._bar = _rich_bar()
            self._bar.__enter__()
            self._task = self._bar.add_task(self._bar_label, total=self.total, completed=self.done, loss=float("nan"))
        self._write()
        return self._advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        self._write()

    def _advance(self, loss: float) -> None:
        self.done += 1
        self._loss = loss if math.isfinite(loss) else None
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=loss)
        if self._file is not None and time.time() - self._written >= WRITE_EVERY_S:
            self._write()

    def _write(self) -> None:
        if self._file is None:
            return
        self._written = time.time()
        state = {"stage": self.stage, "step": self.done, "steps": self.total, "loss": self._loss,
                 "updated": self._written}  # fmt: skip
        try:
            write_atomic(self._file, json.dumps(state), durable=False)
        except OSError:
            self._file = None  # a progress display must never stop training; status then shows less


def _rich_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TaskProgressColumn(show_speed=True),
        TimeRemainingColumn(),
        transient=True,
    )
