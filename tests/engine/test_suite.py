"""Suite files: validation errors name the file, the key path and what was expected."""

from pathlib import Path

import pytest
import yaml
from toy_suites import toy_suite

from bench_core.api import BenchError
from bench_core.suite import Budget, load_suite


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_valid_suite_defaults(tmp_path):
    suite = load_suite(write(tmp_path, yaml.safe_dump(toy_suite())))
    assert suite.name == "toy" and suite.seeds == [0]
    assert suite.metrics[0].plugin == "toy-mae"  # shorthand expanded
    assert suite.resolved_output_dir == Path("reports/toy")
    assert len(suite.source_hash) == 16
    assert suite.models[0].label == "toy-ae"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nmodels: [a, b\n")
    with pytest.raises(BenchError) as err:
        load_suite(path)
    assert str(path) in str(err.value) and "malformed YAML" in str(err.value) and "line" in str(err.value)


def test_unknown_top_level_key_suggests_nearest(tmp_path):
    data = toy_suite()
    data["seedz"] = data.pop("seeds")
    with pytest.raises(BenchError) as err:
        load_suite(write(tmp_path, yaml.safe_dump(data)))
    assert "seedz: unknown key; did you mean 'seeds'?" in str(err.value)


def test_unknown_nested_key_has_full_path(tmp_path):
    data = toy_suite(models=[{"plugin": "toy-ae", "budget": {"stepz": 3}}])
    with pytest.raises(BenchError) as err:
        load_suite(write(tmp_path, yaml.safe_dump(data)))
    message = str(err.value)
    assert "models[0].budget.stepz: unknown key; did you mean 'steps'?" in message
    assert "valid keys: steps, epochs" in message


def test_wrong_type_and_missing_key(tmp_path):
    data = toy_suite(device="gpu")
    del data["metrics"]
    with pytest.raises(BenchError) as err:
        load_suite(write(tmp_path, yaml.safe_dump(data)))
    message = str(err.value)
    assert "device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')" in message
    assert "metrics: required key is missing" in message


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(BenchError, match="expected a mapping"):
        load_suite(write(tmp_path, "- a\n- b\n"))


def test_missing_file():
    with pytest.raises(BenchError, match="suite file not found"):
        load_suite("/nonexistent/suite.yaml")


def test_duplicate_labels_rejected(tmp_path):
    data = toy_suite(models=[{"plugin": "toy-ae"}, {"plugin": "toy-ae"}])
    with pytest.raises(BenchError, match="models labels must be unique; repeated: toy-ae"):
        load_suite(write(tmp_path, yaml.safe_dump(data)))


def test_unsafe_yaml_tags_refused(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BenchError, match="malformed YAML"):
        load_suite(path)


def test_stage_budget_overrides():
    budget = Budget(steps=10, batch_size=4, stages={"prior": Budget(steps=3)})
    assert budget.for_stage("prior").steps == 3 and budget.for_stage("prior").batch_size == 4
    assert budget.for_stage("other").steps == 10
