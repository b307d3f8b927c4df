"""One-way translators and per-task failures (#19.3), and incompatibility(spec, config) (#19.4)."""

from __future__ import annotations

from pathlib import Path

import fakeplugins
import pytest
import torch
from fakeplugins import MAE
from toy_suites import toy_suite

from bench_core.api import API_VERSION, RECONSTRUCT, TRANSLATE, BenchError, DataSpec
from bench_core.cells import plan
from bench_core.describe import describe, find, format_description
from bench_core.evaluator import EvalJob, EvalSettings, evaluate, model_tasks, tasks_for
from bench_core.plugins import incompatibility_of, load_registry, tasks_problem
from bench_core.runner import Console, Runner
from bench_core.store import ResultsStore
from bench_core.suite import Suite

PAIR = DataSpec(("ct", "mr"), (1, 1), 2, (4, 4), (0.0, 1.0), {"test": 3})


def _model_class(**attrs) -> type:
    base = {"name": "m", "version": "1", "api_version": API_VERSION, "dims": frozenset({2}), "configs": {"c": {}},
            "default_config": "c", "capabilities": frozenset({RECONSTRUCT, TRANSLATE})}  # fmt: skip
    return type("M", (), {**base, **attrs})


# -- declared tasks ---------------------------------------------------------------------------------
def test_declared_roles_pick_tasks_by_position_whatever_the_modality_names():
    everything = [t.name for t in tasks_for(frozenset({RECONSTRUCT, TRANSLATE}), PAIR)]
    assert everything == ["ct2ct", "mr2mr", "ct2mr", "mr2ct"]
    one_way = tasks_for(frozenset({RECONSTRUCT, TRANSLATE}), PAIR, {"A2B", "B2B"})
    assert [(t.name, t.source, t.target) for t in one_way] == [("mr2mr", "mr", "mr"), ("ct2mr", "ct", "mr")]
    assert [t.name for t in model_tasks(_model_class(tasks=frozenset({"B2A"})), PAIR)] == ["mr2ct"]
    assert [t.name for t in model_tasks(_model_class(), PAIR)] == everything  # no tasks attribute: all


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        (frozenset({"A2B", "AtoB"}), "unknown task AtoB; roles: A2A, A2B, B2A, B2B, recon, sample"),
        (frozenset({"sample"}), "tasks without their capability (sample needs 'sample')"),
        ("A2B", "tasks must be a set of task roles, got 'A2B'"),
    ],
)
def test_bad_task_declarations_are_refused_with_the_reason(tasks, expected):
    problem = tasks_problem(_model_class(tasks=tasks))
    assert problem is not None and expected in problem, problem
    assert tasks_problem(_model_class(tasks=frozenset({"A2B"}))) is None


# -- incompatibility sees the config ------------------------------------------------------------------
def test_incompatibility_gets_the_config_and_the_old_one_argument_form_still_works():
    def new(cls, spec, config):
        return None if spec.shape[0] % config["down"] == 0 else f"needs a multiple of {config['down']}"

    def old(cls, spec):
        return "never" if spec.paired else None

    modern, legacy = _model_class(incompatibility=classmethod(new)), _model_class(incompatibility=classmethod(old))
    assert incompatibility_of(modern, PAIR, {"down": 2}) is None
    assert incompatibility_of(modern, PAIR, {"down": 3}) == "needs a multiple of 3"
    assert incompatibility_of(legacy, PAIR, {"down": 3}) == "never"


# -- a failing task keeps the other tasks' rows -------------------------------------------------------
class _Half(torch.nn.Module):
    """Reconstructs as x / 2, translates A->B exactly, and breaks B->A in the way ``mode`` says."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def reconstruct(self, x, modality):
        return x / 2

    def translate(self, x, source, target):
        if source == "ct":
            return -x
        if self.mode == "raise":
            raise NotImplementedError("one way only")
        return torch.full_like(x, float("nan")) if self.mode == "nan" else x[..., :2]


class _Split(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand((n, 1, 4, 4), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"ct": self.x[i], "mr": -self.x[i], "id": f"item{i}"}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("raise", "NotImplementedError: one way only"),
        ("nan", "task mr2ct: the model produced NaN or Inf values"),
        ("shape", "task mr2ct: model output shape (2, 1, 4, 2) differs from the target's (2, 1, 4, 4)"),
    ],
)
def test_one_failing_task_is_recorded_and_the_others_rows_kept(tmp_path, mode, reason):
    spec = DataSpec(("ct", "mr"), (1, 1), 2, (4, 4), (-1.0, 1.0), {"test": 5})
    data = _Split(5)
    job = EvalJob(_Half(mode), spec, tasks_for(frozenset({RECONSTRUCT, TRANSLATE}), spec), {"mae": (MAE, {})}, data)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=2)
    outcome = evaluate(job, settings, tmp_path)
    assert outcome.failed == {"mr2ct": reason}
    maes = {r.task: r.value for r in outcome.rows if r.metric == "mae"}
    assert set(maes) == {"ct2ct", "mr2mr", "ct2mr"}
    assert maes["ct2mr"] == pytest.approx(0.0, abs=1e-7)
    # ct2ct: |x/2 - x| in [-1, 1] mapped to [0, 1] is |x| / 4 per pixel (x in [0, 1]).
    assert maes["ct2ct"] == pytest.approx(float((data.x / 4).mean()), rel=1e-6)
    assert not (tmp_path / "mr2ct").exists() and (tmp_path / "ct2mr").is_dir()


def test_every_task_failing_fails_the_evaluation_naming_each(tmp_path):
    spec = DataSpec(("ct", "mr"), (1, 1), 2, (4, 4), (-1.0, 1.0), {"test": 3})
    tasks = [t for t in tasks_for(frozenset({TRANSLATE}), spec) if t.name == "mr2ct"]
    job = EvalJob(_Half("raise"), spec, tasks, {"mae": (MAE, {})}, _Split(3))
    with pytest.raises(BenchError, match=r"^every task failed: mr2ct: NotImplementedError: one way only$"):
        evaluate(job, EvalSettings(device=torch.device("cpu")), tmp_path)


# -- end to end: the cells of a one-way and a refusing model -------------------------------------------
def test_one_way_model_gets_its_tasks_and_a_refusing_one_keeps_its_rows(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    models = [{"plugin": name, "budget": {"steps": 4}} for name in ("toy-oneway", "toy-refuser")]
    suite = Suite.model_validate(toy_suite(
        models=models, datasets=[{"plugin": "toy", "root": "embedded", "options": {"paired": True}}],
        metrics=["toy-mae"], evaluation={"batch_size": 4, "save_images": False},
    ))  # fmt: skip
    registry = load_registry(extra_modules=[fakeplugins])
    lines: list[str] = []
    runner = Runner(suite, registry, output_dir=tmp_path / "out", console=Console(False, lines.append))
    summary = runner.run(plan(suite))
    assert summary["failed"] == 0, summary
    store = ResultsStore(tmp_path / "out")
    cells = {c["model"]: c for c in store.cells()}
    tasks = {m: {r.task for r in store.results() if r.model == m and r.metric == "toy-mae"} for m in cells}
    store.close()
    # toy-refuser claims B2A (it fails only when asked), so the baselines are scored on it too.
    assert tasks["baseline:identity"] == {"A2B", "B2A"}
    tasks = {m: t for m, t in tasks.items() if not m.startswith("baseline:")}
    assert tasks == {"toy-oneway": {"A2A", "B2B", "A2B"}, "toy-refuser": {"A2A", "B2B", "A2B"}}
    assert cells["toy-oneway"]["reason"] is None and "failed_tasks" not in cells["toy-oneway"]["details"]
    refuser = cells["toy-refuser"]
    assert refuser["status"] == "done"
    assert refuser["reason"] == "failed tasks: B2A: NotImplementedError: toy-refuser translates A to B only"
    assert refuser["details"]["failed_tasks"] == {"B2A": "NotImplementedError: toy-refuser translates A to B only"}
    assert "task B2A failed: NotImplementedError: toy-refuser translates A to B only" in refuser["details"]["notes"]
    (line,) = [line for line in lines if line.startswith("✓ toy-refuser/toy/seed0: done")]
    assert line.endswith(" (failed tasks: B2A: NotImplementedError: toy-refuser translates A to B only)"), line



def test_plugins_details_show_the_declared_tasks():
    registry = load_registry(extra_modules=[fakeplugins])
    one_way, refuser = (describe(find(registry, name)[0]) for name in ("toy-oneway", "toy-refuser"))
    assert one_way["declared_tasks"] == ["A2A", "A2B", "B2B"]
    assert one_way["tasks"]["2D pair A/B (32x32)"] == "not served: toy-ae needs 16x16 images, got (32, 32)"
    assert refuser["declared_tasks"] == "all of its capabilities"
    assert "\n  tasks: A2A, A2B, B2B\n" in format_description(one_way)
