"""include / exclude / --only patterns that match no cell are errors naming the nearest cell (#19.7)."""

from __future__ import annotations

import pytest
from toy_suites import toy_suite

from bench_core.api import BenchError
from bench_core.cells import plan
from bench_core.suite import Suite

MODELS = [{"plugin": "toy-ae"}, {"plugin": "toy-3d"}]


def _suite(**overrides) -> Suite:
    return Suite.model_validate(toy_suite(models=MODELS, seeds=[0, 1], **overrides))


def test_patterns_that_match_select_cells():
    assert [c.id for c in plan(_suite(include=["toy-ae/*"]))] == ["toy-ae/toy/seed0", "toy-ae/toy/seed1"]
    assert [c.id for c in plan(_suite(exclude=["*/seed1"]), only=["toy-3d/*"])] == ["toy-3d/toy/seed0"]


@pytest.mark.parametrize(
    ("overrides", "only", "message"),
    [
        ({"include": ["toy-ea/*"]}, None, "include pattern 'toy-ea/*' matches no cell of the suite; "
                                          "the nearest cell is 'toy-ae/toy/seed1'"),
        ({"exclude": ["*/seed2"]}, None, "exclude pattern '*/seed2' matches no cell of the suite; "
                                         "the nearest cell is 'toy-ae/toy/seed1'"),
        ({}, ["toy-3d/toy/seed0", "toy-3d/toy/sed1"], "--only pattern 'toy-3d/toy/sed1' matches no cell of the suite; "
                                                      "the nearest cell is 'toy-3d/toy/seed1'"),
    ],
)  # fmt: skip
def test_a_pattern_matching_nothing_is_an_error_naming_it_and_the_nearest_cell(overrides, only, message):
    with pytest.raises(BenchError) as err:
        plan(_suite(**overrides), only=only)
    assert str(err.value) == message + " (cell ids are model/dataset/seedN, glob patterns: *, ?, [...])"


def test_cli_reports_a_mistyped_only_without_running(run_bench, write_suite):
    result = run_bench("run", str(write_suite(toy_suite())), "--only", "toy-ae/toy/seed9", "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "--only pattern 'toy-ae/toy/seed9' matches no cell of the suite; the nearest cell is 'toy-ae/toy/seed0'" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
