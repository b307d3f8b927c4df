"""Faults and bad state: damaged checkpoints, hostile suite values, writers killed mid-write."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from toy_suites import toy_suite

from bench_core.api import BenchError
from bench_core.checkpoints import (
    BEST_WEIGHTS,
    WEIGHTS,
    CheckpointError,
    load_train_state,
    load_weights,
    save_train_state,
    save_weights,
)
from bench_core.fileio import remove_stale_temporaries, replace_atomically, write_atomic
from bench_core.suite import load_suite

LIMIT = 300  # the runner records a failed cell's first 300 characters


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _cut(path: Path, keep: int | float) -> None:
    """Truncate ``path`` to ``keep`` bytes (a fraction: of its size), as a full disk or a cut copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])


def _assert_actionable(message: str, starts: str) -> None:
    assert message.startswith(starts), message
    assert "weights_only" not in message and "\n" not in message, message
    assert len(message) <= LIMIT, (len(message), message)


# -- damaged checkpoints: the message leads with what to delete ---------------------------------
@pytest.mark.parametrize("keep", [0, 100, 0.5, 0.99])
def test_truncated_training_state_names_file_and_remedy(tmp_path, keep):
    path = tmp_path / "checkpoints" / "k" / "00-train_state.pt"
    save_train_state(path, {"stage": "ae", "step": 5, "model": _model().state_dict(), "rng": torch.get_rng_state()})
    _cut(path, keep)
    with pytest.raises(CheckpointError) as err:
        load_train_state(path)
    _assert_actionable(str(err.value), f"training state {path} is damaged; delete it to restart")
    assert "from step 0 (cause: " in str(err.value)


def test_refused_pickle_in_training_state_never_suggests_unsafe_loading(tmp_path):
    class Hostile:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "state.pt"
    torch.save({"stage": "ae", "payload": Hostile()}, path)
    with pytest.raises(CheckpointError) as err:
        load_train_state(path)
    _assert_actionable(str(err.value), f"training state {path} is damaged; delete it to restart")
    assert "not plain tensors and numbers" in str(err.value)


def test_damaged_training_state_message_fits_with_a_long_path(tmp_path):
    path = tmp_path / ("deep-" * 14) / "00-train_state.pt"  # leaves little room: the cause is clipped
    save_train_state(path, {"step": 1})
    _cut(path, 0.5)
    with pytest.raises(CheckpointError) as err:
        load_train_state(path)
    _assert_actionable(str(err.value), f"training state {path} is damaged; delete it to restart")


@pytest.mark.parametrize("keep", [0, 20, 0.5, 0.99])
def test_truncated_weights_in_the_store_say_deleting_them_retrains(tmp_path, keep):
    folder = tmp_path / "checkpoints" / "abc123"
    save_weights(_model(), folder, {"cell": "m/d/seed0"})
    save_weights(_model(), folder, None, name=BEST_WEIGHTS)
    for name, remedy in ((WEIGHTS, "delete it to retrain this cell"),
                         (BEST_WEIGHTS, "delete its folder abc123 to retrain this cell")):  # fmt: skip
        _cut(folder / name, keep)
        with pytest.raises(CheckpointError) as err:
            load_weights(_model(), folder / name)
        _assert_actionable(str(err.value), f"checkpoint {folder / name} is damaged; {remedy} (cause: ")


def test_damaged_weights_outside_the_store_ask_for_a_good_copy(tmp_path):
    path = tmp_path / "downloaded.pt"
    torch.save({"model": _model().state_dict()}, path)
    _cut(path, 0.5)
    with pytest.raises(CheckpointError) as err:
        load_weights(_model(), path)
    _assert_actionable(str(err.value), f"checkpoint {path} is corrupt or not a weights file; replace it")


# -- suite values that would write elsewhere or run something else than meant ------------------
def _suite_error(tmp_path: Path, **overrides) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(toy_suite(**overrides)))
    with pytest.raises(BenchError) as err:
        load_suite(path)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "a\0b", "../../etc"])
def test_suite_name_that_is_not_one_folder_is_refused(tmp_path, name):
    assert "  name: must be one folder name of letters, digits" in _suite_error(tmp_path, name=name)


def test_repeated_seed_is_refused_naming_it(tmp_path):
    assert "  seeds: each seed once; repeated: 3" in _suite_error(tmp_path, seeds=[0, 3, 1, 3])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"models": [{"plugin": "toy-ae", "budget": {"steps": True}}]},
         "  models[0].budget.steps: Input should be a valid integer (got True)"),
        ({"models": [{"plugin": "toy-ae", "budget": {"stages": {"ae": {"epochs": False}}}}]},
         "  models[0].budget.stages.ae.epochs: Input should be a valid integer (got False)"),
        ({"seeds": [0, True]}, "  seeds[1]: Input should be a valid integer (got True)"),
        ({"evaluation": {"batch_size": "8"}}, "  evaluation.batch_size: Input should be a valid integer (got '8')"),
        ({"evaluation": {"temperature": True}}, "  evaluation.temperature: Input should be a valid number (got True)"),
    ],
    ids=["steps", "stage-epochs", "seed", "quoted", "temperature"],
)  # fmt: skip
def test_boolean_or_text_where_a_number_belongs_is_refused(tmp_path, overrides, expected):
    assert expected in _suite_error(tmp_path, **overrides)


def test_whole_numbers_still_fill_number_fields(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(toy_suite(seeds=[2, 1], evaluation={"temperature": 1})))
    suite = load_suite(path)
    assert suite.seeds == [2, 1] and suite.evaluation.temperature == 1.0


# -- writers killed or failing mid-write ---------------------------------------------------------
def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_or_old_writers_are_removed(tmp_path):
    dead, own = _dead_pid(), os.getpid()
    synthesis = tmp_path / f".phantoms-v1-n64-seed0.{dead}.tmp"  # the runner's embedded-data folder
    (synthesis / "train").mkdir(parents=True)
    (synthesis / "train" / "0.png").write_bytes(b"half")
    cut_page = tmp_path / f".index.html.{dead}.0123456789ab.tmp"
    cut_page.write_text("<html>")
    writing = tmp_path / f".phantoms-v1-n64-seed1.{own}.tmp"  # this process: still being written
    writing.mkdir()
    unowned = tmp_path / ".x.tmp"
    unowned.write_text("")
    ancient = tmp_path / f".meta.json.{own}.abcdefabcdef.tmp"
    ancient.write_text("{")
    os.utime(ancient, (time.time() - 3 * 86400,) * 2)
    finished = tmp_path / "phantoms-v1-n64-seed0"
    finished.mkdir()

    removed = remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted([synthesis, cut_page, ancient])
    assert writing.is_dir() and unowned.exists() and finished.is_dir() and not synthesis.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "page.html"
    write_atomic(target, "<html>old</html>")

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"<html>ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, fail)
    blocked = tmp_path / "folder"
    (blocked / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(blocked, b"a file cannot replace a folder")
    assert target.read_text() == "<html>old</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "page.html"]
