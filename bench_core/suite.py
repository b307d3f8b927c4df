"""Suite files: YAML read with a safe loader and validated with pydantic.

Every error names the file, the key path (``models[0].budget.stepz``) and what was
expected; an unknown key suggests the nearest valid one. Numbers are strict: YAML's
``true`` is no ``1`` and ``"5"`` no ``5`` (a typo there would silently train for one step).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from bench_core.api import BenchError

_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """How long each training stage runs: ``steps`` or ``epochs`` (steps win if both)."""

    steps: StrictInt | None = Field(default=None, gt=0)
    epochs: StrictInt | None = Field(default=None, gt=0)
    batch_size: StrictInt | None = Field(default=None, gt=0)
    accumulate: StrictInt | None = Field(default=None, gt=0)
    stages: dict[str, Budget] = Field(default_factory=dict)
    checkpoint_every: StrictInt = Field(default=200, gt=0)

    def for_stage(self, stage: str) -> Budget:
        """The budget of one stage: its own entry over the suite-wide values."""
        own = self.stages.get(stage)
        if own is None:
            return self
        return Budget(
            steps=own.steps if own.steps or own.epochs else self.steps,
            epochs=own.epochs if own.steps or own.epochs else self.epochs,
            batch_size=own.batch_size or self.batch_size,
            accumulate=own.accumulate or self.accumulate,
            checkpoint_every=own.checkpoint_every,
        )


class ModelEntry(_Strict):
    """A model of the suite: plugin name, named config plus overrides, budget or checkpoint."""

    plugin: str
    id: str | None = None
    config: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    load: Path | None = None
    # How to read `load`: our safetensors / state dict ("ours"), a checkpoint as the model's
    # source code saves it ("source", converted by the plugin's from_source), or by its keys ("auto").
    # Left out of dumps (cell keys): it changes how the file is read, never the weights loaded.
    load_format: Literal["auto", "ours", "source"] = Field(default="auto", exclude=True)

    @property
    def label(self) -> str:
        """Row label in tables: the explicit id, else ``plugin`` or ``plugin-config``."""
        if self.id:
            return self.id
        return f"{self.plugin}-{self.config}" if self.config else self.plugin


class EmbeddedData(_Strict):
    """Size and seed of embedded data a dataset plugin synthesises in its own format."""

    n: StrictInt = Field(default=64, gt=0)
    seed: StrictInt = 0


class DatasetEntry(_Strict):
    """A dataset of the suite: plugin, root folder (or ``embedded``) and loader options."""

    plugin: str
    id: str | None = None
    root: str
    embedded: EmbeddedData = Field(default_factory=EmbeddedData)
    options: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)

    @field_validator("augment")
    @classmethod
    def _augment_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from bench_core.augment import check_settings

        try:
            return check_settings(value, "augment")
        except BenchError as exc:
            raise ValueError(str(exc)) from None

    @property
    def label(self) -> str:
        """Column/section label: the explicit id, else the plugin name."""
        return self.id or self.plugin

    @property
    def is_embedded(self) -> bool:
        """True when the data is synthesised by the plugin instead of read from disk."""
        return self.root == "embedded"


class MetricEntry(_Strict):
    """A metric of the suite with its options (e.g. ``preset`` of SSIM)."""

    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)


class Variant(_Strict):
    """Which weights to evaluate and at which temperature.

    ``checkpoint``: ``latest`` (the end of training) or ``best`` (the best validation score;
    needs a ``validation:`` section). ``temperature``: passed to the model's
    ``reconstruct``/``translate`` (when they take one) and to ``sample``; ``None`` keeps the
    model's own and ``evaluation.temperature`` for sampling.
    """

    checkpoint: Literal["latest", "best"] = "latest"
    temperature: StrictFloat | None = Field(default=None, ge=0)

    @property
    def label(self) -> str:
        """``best-t0``, ``latest``...: the suffix of this variant's task names (``A2B@best-t0``)."""
        return self.checkpoint + (f"-t{self.temperature:g}" if self.temperature is not None else "")


class Evaluation(_Strict):
    """Evaluation settings shared by every cell.

    ``variants``: the first is the headline (plain task names, e.g. ``A2B``); every other
    one is stored under ``<task>@<variant label>`` (e.g. ``A2B@latest-t1``), so each gets
    its own leaderboard section.
    """

    batch_size: StrictInt = Field(default=16, gt=0)
    n_samples: StrictInt = Field(default=64, gt=0)
    temperature: StrictFloat = Field(default=1.0, ge=0)
    grid_size: StrictInt = Field(default=8, gt=0)
    max_items: StrictInt | None = Field(default=None, gt=0)
    save_images: bool = True
    variants: list[Variant] = Field(default_factory=lambda: [Variant()], min_length=1)

    @field_validator("variants")
    @classmethod
    def _variants_unique(cls, value: list[Variant]) -> list[Variant]:
        labels = [v.label for v in value]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"variants must differ; repeated: {', '.join(dup)}")
        return value


class Validation(_Strict):
    """Scoring on the val split during training, which picks the ``best`` checkpoint.

    The model is scored on ``task`` (default: its first evaluation task) with ``metric`` every
    ``every_epochs`` epochs or ``every_steps`` steps of its last training stage, and at the
    end; the best-scoring weights are kept (the metric's direction decides "best").
    """

    metric: str = "psnr"
    options: dict[str, Any] = Field(default_factory=dict)
    task: str | None = None
    every_epochs: StrictInt | None = Field(default=None, gt=0)
    every_steps: StrictInt | None = Field(default=None, gt=0)
    max_items: StrictInt | None = Field(default=None, gt=0)
    batch_size: StrictInt = Field(default=16, gt=0)
    temperature: StrictFloat | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_period(self) -> Validation:
        if (self.every_epochs is None) == (self.every_steps is None):
            raise ValueError("give exactly one of every_epochs and every_steps")
        return self


class Executor(_Strict):
    """Where the cells run (``bench run --executor`` and ``--executor-opt`` override it; docs/cluster.md).

    ``inline``: one after another in the ``bench run`` process. ``local``: parallel local processes
    (submitit's local executor), ``max_parallel`` at a time. ``slurm``: one Slurm job-array task per
    cell (submitit), with the allocation described by the other keys.
    """

    kind: Literal["inline", "local", "slurm"] = "inline"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: StrictInt = Field(default=240, gt=0)
    nodes: StrictInt = Field(default=1, gt=0)
    gpus_per_cell: StrictInt = Field(default=0, ge=0)
    tasks_per_node: StrictInt | None = Field(default=None, gt=0)
    cpus_per_task: StrictInt | None = Field(default=None, gt=0)
    mem_gb: StrictInt | StrictFloat | None = Field(default=None, gt=0)
    max_parallel: StrictInt | None = Field(default=None, gt=0)
    max_retries: StrictInt = Field(default=1, ge=0)
    max_timeouts: StrictInt = Field(default=3, ge=0)
    setup: list[str] = Field(default_factory=list)
    sbatch: dict[str, StrictInt | str] = Field(default_factory=dict)
    poll_s: StrictInt | StrictFloat = Field(default=5, gt=0)

    @model_validator(mode="after")
    def _gpus_split_over_nodes(self) -> Executor:
        if self.gpus_per_cell % self.nodes:
            raise ValueError(f"gpus_per_cell ({self.gpus_per_cell}) must be a multiple of nodes ({self.nodes})")
        return self


class Suite(_Strict):
    """A benchmark suite: models x datasets x seeds, metrics and run settings."""

    name: str
    description: str = ""
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "amp", "bf16"] = "fp32"
    deterministic: bool = True
    compile: bool = False
    output_dir: Path | None = None
    models: list[ModelEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    metrics: list[MetricEntry] = Field(min_length=1)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    validation: Validation | None = None
    workers: StrictInt = Field(default=0, ge=0)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list)
    executor: Executor = Field(default_factory=Executor)

    # Filled by load_suite, not by the YAML.
    source_path: Path | None = Field(default=None, exclude=True)
    source_hash: str = Field(default="", exclude=True)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_shorthand(cls, value: Any) -> Any:
        # `metrics: [psnr, ssim]` is the common case; expand plain names.
        if isinstance(value, list):
            return [{"plugin": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, value: str) -> str:
        # The name is the default output folder (reports/<name>): it must not lead anywhere else.
        if not _FOLDER_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                "must be one folder name of letters, digits, '_', '.' and '-' (not '.' or '..'), e.g. my-suite"
            )
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, value: list[int]) -> list[int]:
        # `seeds: [0, 0]` names every cell twice: a typo, never a request.
        dup = sorted({x for x in value if value.count(x) > 1})
        if dup:
            raise ValueError(f"each seed once; repeated: {', '.join(map(str, dup))}")
        return value

    @field_validator("requires")
    @classmethod
    def _requirements_parse(cls, value: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for item in value:
            try:
                Requirement(item)
            except InvalidRequirement as exc:
                raise ValueError(f"{item!r} is not a requirement like 'my-plugins>=0.2' ({exc})") from None
        return value

    @model_validator(mode="after")
    def _unique_labels(self) -> Suite:
        for what, labels in (
            ("models", [m.label for m in self.models]),
            ("datasets", [d.label for d in self.datasets]),
        ):
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"{what} labels must be unique; repeated: {', '.join(dup)} (set `id:`)")
        return self

    @model_validator(mode="after")
    def _best_needs_validation(self) -> Suite:
        if self.validation is None and any(v.checkpoint == "best" for v in self.evaluation.variants):
            raise ValueError(
                "evaluation.variants asks for checkpoint: best, but the suite has no `validation:` section "
                "saying how to pick it (e.g. validation: {metric: psnr, task: B2A, every_epochs: 1})"
            )
        return self

    @property
    def resolved_output_dir(self) -> Path:
        """Where results go: ``output_dir`` or ``reports/<name>``."""
        return self.output_dir or Path("reports") / self.name


def unmet_requirements(requires: list[str]) -> list[str]:
    """One message per requirement of ``requires`` that the installed distributions do not meet."""
    from importlib import metadata

    from packaging.requirements import Requirement

    problems = []
    for text in requires:
        req = Requirement(text)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (pip install '{text}')")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed; the suite needs {text} (pip install '{text}')")
    return problems


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; raise :class:`BenchError` naming file, key and expectation."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchError(f"suite file not found: {path}") from None
    except OSError as exc:
        raise BenchError(f"cannot read suite file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise BenchError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a mapping of suite keys at the top level, got {type(data).__name__}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise BenchError(f"{path}: invalid suite\n" + "\n".join(_describe(e) for e in exc.errors())) from None
    suite.source_path = path
    suite.source_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    return suite


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    key_path = _format_loc(loc)
    if error["type"] == "extra_forbidden":
        valid = _fields_at(Suite, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"  {key_path}: unknown key{suggestion} (valid keys: {', '.join(valid)})"
    if error["type"] == "missing":
        return f"  {key_path}: required key is missing"
    got = error.get("input")
    got_text = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks' messages
    return f"  {key_path}: {message}{got_text}"


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the pydantic model reached by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:  # a key of a dict-valued field (e.g. a stage name): stay on the model
            continue
        current = _model_in(field.annotation)
    if current is None or not hasattr(current, "model_fields"):
        return []
    return [name for name, f in current.model_fields.items() if not f.exclude]


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like ``list[ModelEntry]`` or ``Budget | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
