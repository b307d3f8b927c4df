"""The training progress file that `bench status` reads (bench_core.progress)."""

from __future__ import annotations

import pytest

from bench_core import progress as progress_module
from bench_core.progress import PROGRESS_FILE_VAR, StageProgress, describe, progress_file, read_progress


def test_the_file_holds_the_stage_step_and_last_finite_loss(tmp_path, monkeypatch) -> None:
    path = tmp_path / "state" / "unit.progress.json"
    monkeypatch.setattr(progress_module, "WRITE_EVERY_S", 0.0)  # every update written
    with StageProgress("top_prior", 10, 3, bar_label=None, file=path) as advance:
        first = read_progress(path)
        assert {k: first[k] for k in ("stage", "step", "steps", "loss")} == {"stage": "top_prior", "step": 3,
                                                                            "steps": 10, "loss": None}  # fmt: skip
        advance(0.5)
        assert (read_progress(path)["step"], read_progress(path)["loss"]) == (4, 0.5)
        advance(float("nan"))  # a skipped update's loss is not shown as the current loss
        assert read_progress(path)["loss"] is None
    assert read_progress(path)["step"] == 5
    assert describe(read_progress(path)) == "stage top_prior step 5/10"
    assert describe({"stage": "vqvae", "step": 7, "steps": 9, "loss": 0.123456}) == "stage vqvae step 7/9, loss 0.1235"


def test_writes_are_throttled_but_the_end_is_always_written(tmp_path) -> None:
    path = tmp_path / "p.json"
    with StageProgress("s", 100, 0, bar_label=None, file=path) as advance:
        for _ in range(50):
            advance(1.0)
        assert read_progress(path)["step"] == 0  # within WRITE_EVERY_S of the first write
    assert read_progress(path)["step"] == 50


def test_an_unwritable_file_never_stops_training(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with StageProgress("s", 2, 0, bar_label=None, file=blocker / "p.json") as advance:
        advance(1.0)
    assert not (blocker / "p.json").exists()


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]"])
def test_unreadable_progress_is_none(tmp_path, text) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    assert read_progress(path) is None
    assert read_progress(tmp_path / "absent.json") is None


def test_the_variable_names_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_FILE_VAR, raising=False)
    assert progress_file() is None
    monkeypatch.setenv(PROGRESS_FILE_VAR, str(tmp_path / "x.json"))
    assert progress_file() == tmp_path / "x.json"
