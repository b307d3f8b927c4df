"""`bench run --dry-run` checks what it promises: splits, options, params and validation, before any work."""

from __future__ import annotations

import shutil

import pytest
from toy_suites import toy_suite


def _dry(run_bench, write_suite, **suite):
    result = run_bench("run", str(write_suite(toy_suite(**suite))), "--dry-run")
    return result.returncode, result.stderr


@pytest.fixture
def toy_data(run_bench, tmp_path):
    root = tmp_path / "toydata"
    assert run_bench("data", "make", "toy", str(root)).returncode == 0
    return root


def test_dry_run_catches_an_empty_test_split(run_bench, write_suite, toy_data):
    for item in (toy_data / "test").iterdir():
        item.unlink()
    code, err = _dry(run_bench, write_suite, datasets=[{"plugin": "toy", "root": str(toy_data)}])
    assert code == 2
    assert "datasets[toy]: empty or missing split test (needed by evaluation)" in err


def test_dry_run_catches_a_missing_split_folder(run_bench, write_suite, toy_data):
    shutil.rmtree(toy_data / "train")
    code, err = _dry(run_bench, write_suite, datasets=[{"plugin": "toy", "root": str(toy_data)}])
    assert code == 2 and "datasets[toy]: toy: missing split folder" in err


def test_dry_run_catches_validation_on_an_empty_val_split(run_bench, write_suite, toy_data):
    shutil.rmtree(toy_data / "val")
    (toy_data / "val").mkdir()
    validation = {"metric": "toy-mae", "every_steps": 5}
    code, err = _dry(run_bench, write_suite, datasets=[{"plugin": "toy", "root": str(toy_data)}], validation=validation)
    assert code == 2 and "empty or missing split val (needed by validation:)" in err


def test_dry_run_catches_a_misspelt_dataset_option(run_bench, write_suite):
    datasets = [{"plugin": "toy", "root": "embedded", "options": {"pairde": True}}]
    code, err = _dry(run_bench, write_suite, datasets=datasets)
    assert code == 2
    assert "datasets[toy].options: unknown option 'pairde' (did you mean 'paired'?); toy takes: paired" in err


def test_dry_run_catches_a_misspelt_metric_option(run_bench, write_suite):
    code, err = _dry(run_bench, write_suite, metrics=[{"plugin": "ssim", "options": {"presett": "gaussian"}}])
    assert code == 2
    assert "metrics[ssim].options: unknown option 'presett' (did you mean 'preset'?)" in err


def test_dry_run_catches_impossible_params_by_building_on_the_meta_device(run_bench, write_suite):
    models = [{"plugin": "vqvae2", "config": "tiny", "params": {"n_embeddings": -4}}]
    datasets = [{"plugin": "hipmri", "root": "embedded", "embedded": {"n": 12}, "options": {"size": [64, 32]}}]
    code, err = _dry(run_bench, write_suite, models=models, datasets=datasets, metrics=["psnr"])
    assert code == 2
    assert "models[vqvae2-tiny] on hipmri:" in err
