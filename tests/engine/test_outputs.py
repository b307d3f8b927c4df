"""Documented outputs (#19.6): undefined values keep their kind in the store and the exports; folder names."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import fakeplugins
import pyarrow.parquet as pq
import pytest
from toy_suites import toy_suite

from bench_core.cells import plan
from bench_core.export import export
from bench_core.jsonvalues import decode_nonfinite, dumps, encode_nonfinite
from bench_core.plugins import load_registry
from bench_core.rows import ResultRow
from bench_core.runner import Runner
from bench_core.store import CellIdentity, ResultsStore
from bench_core.suite import Suite

VALUES = {"undefined": math.nan, "infinite": math.inf, "negative": -math.inf, "missing": None, "plain": 0.25}


def _refuse_constant(token: str):
    raise AssertionError(f"non-strict JSON token {token}")


def test_nonfinite_numbers_round_trip_through_strict_json():
    data = {"a": [math.nan, math.inf, -math.inf, None, 1.5], "b": {"c": (math.inf,)}}
    text = dumps(data)
    assert json.loads(text, parse_constant=_refuse_constant) == {
        "a": ["nan", "inf", "-inf", None, 1.5], "b": {"c": ["inf"]}
    }
    back = decode_nonfinite(json.loads(text))
    assert math.isnan(back["a"][0]) and back["a"][1:] == [math.inf, -math.inf, None, 1.5]
    assert encode_nonfinite("nan") == "nan" and encode_nonfinite(2) == 2


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store with one done cell whose rows are NaN, +inf, -inf, missing and plain."""
    store = ResultsStore(tmp_path)
    cell = CellIdentity("k1", "s", "m", "d", 0)
    assert store.claim_cell(cell, "r1") == "claimed"
    rows = [ResultRow(task="recon", metric=name, value=value, higher_is_better=True) for name, value in VALUES.items()]
    store.finish_cell("k1", "done", None, {}, rows)
    store.record_plan("s", "r1", ["k1"])
    store.close()
    return tmp_path


def test_the_store_keeps_nan_apart_from_missing(store_dir: Path):
    raw = dict(sqlite3.connect(store_dir / "results.sqlite").execute("SELECT metric, typeof(value) FROM results"))
    assert raw == {"undefined": "text", "infinite": "real", "negative": "real", "missing": "null", "plain": "real"}
    store = ResultsStore(store_dir)
    got = {r.metric: r.value for r in store.results()}
    store.close()
    assert math.isnan(got.pop("undefined"))
    assert got == {"infinite": math.inf, "negative": -math.inf, "missing": None, "plain": 0.25}


def test_exports_keep_the_kinds_of_undefined_values(store_dir: Path):
    records = json.loads(Path(export(store_dir, "json")).read_text(), parse_constant=_refuse_constant)
    values = {r["metric"]: r["value"] for r in records}
    assert values == {"undefined": "nan", "infinite": "inf", "negative": "-inf", "missing": None, "plain": 0.25}
    assert {r["cell_status"] for r in records} == {"done"} and all(r["current"] for r in records)
    assert json.loads(records[0]["settings"]) == {}

    with open(export(store_dir, "csv"), newline="") as f:
        values = {r["metric"]: r["value"] for r in csv.DictReader(f)}
    assert values == {"undefined": "nan", "infinite": "inf", "negative": "-inf", "missing": "", "plain": "0.25"}

    table = pq.read_table(export(store_dir, "parquet")).to_pylist()
    values = {r["metric"]: r["value"] for r in table}
    assert math.isnan(values.pop("undefined"))
    assert values == {"infinite": math.inf, "negative": -math.inf, "missing": None, "plain": 0.25}


def test_no_output_folder_or_file_name_holds_a_colon(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    suite = Suite.model_validate(toy_suite(
        models=[{"plugin": "toy-ae", "budget": {"steps": 2}}], metrics=["toy-mae"],
        datasets=[{"plugin": "toy", "root": "embedded", "options": {"paired": True}}],
        evaluation={"batch_size": 4, "grid_size": 2},
    ))  # fmt: skip
    out = tmp_path / "out"
    Runner(suite, load_registry(extra_modules=[fakeplugins]), output_dir=out).run(plan(suite))
    names = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert "cells/baseline__mean-image__toy" in names and "cells/toy-ae__toy__seed0" in names
    assert not [n for n in names if ":" in n]
    assert (out / "suite.yaml").is_file()
    for path in out.rglob("eval.json"):  # strict JSON, whatever the metrics returned
        json.loads(path.read_text(), parse_constant=_refuse_constant)


def test_eval_json_is_strict_and_reads_back_its_nonfinite_values(tmp_path: Path):
    from bench_core.results import eval_json_problem, parse_eval_json

    entry = {"mean": math.nan, "std": math.inf, "n": 3, "per_file": {"nan": -math.inf, "a": 0.5, "b": math.nan}}
    text = dumps({"recon": {"m": entry}, "sample": {"copies": {"per_file": {}, "note": "nan"}}}, indent=1)
    json.loads(text, parse_constant=_refuse_constant)
    parsed = parse_eval_json(text)
    read = parsed["recon"]["m"]
    assert math.isnan(read["mean"]) and read["std"] == math.inf and read["n"] == 3
    assert read["per_file"]["nan"] == -math.inf and read["per_file"]["a"] == 0.5 and math.isnan(read["per_file"]["b"])
    assert parsed["sample"]["copies"]["note"] == "nan"  # only the numeric fields are decoded
    assert eval_json_problem(parsed) is None
    old = '{"recon": {"m": {"mean": NaN, "per_file": {"a": Infinity}}}}'  # written before: Python's tokens
    assert parse_eval_json(old)["recon"]["m"]["per_file"]["a"] == math.inf
    assert eval_json_problem(parse_eval_json('{"recon": {"m": {"per_file": {"a": "oops"}}}}')) is not None
