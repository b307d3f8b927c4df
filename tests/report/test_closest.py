"""The cell page's closest sample / training pairs (bench_core/report/closest.py, templates/closest.html)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from bench_core.report.closest import closest_pairs
from bench_core.report.html import build_report


def detail(train_id: str, distance: float, train_nn: float = 1.0) -> dict:
    return {"train_id": train_id, "train_index": 0, "distance": distance, "train_nn_distance": train_nn}


SAMPLES = {"sample_00000": detail("t7", 2.0), "sample_00001": detail("t3", 0.0), "sample_00002": detail("t1", 0.5),
           "sample_00003": detail("t3", 1.5, train_nn=2.0)}  # fmt: skip


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)


def test_closest_first_same_pairs_shown_once_images_only_when_saved(tmp_path):
    png(tmp_path / "sample" / "sample_00001.png")
    png(tmp_path / "train_nearest" / "t3.png")
    evaluation = {"sample": {"copies": {"samples": SAMPLES}, "authenticity": {"samples": dict(SAMPLES)},
                             "data-copying.axial": {"samples": {"sample_00000": detail("t2", 0.1)}},
                             "fid": {"mean": 3.0}}, "recon": {"psnr": {"per_file": {"a": 1.0}}}}  # fmt: skip
    groups = closest_pairs(evaluation, tmp_path, n=3)
    assert [g["metrics"] for g in groups] == [["copies", "authenticity"], ["data-copying.axial"]]
    pairs = groups[0]["pairs"]
    assert [(p["sample"], p["train_id"], p["distance"]) for p in pairs] == [
        ("sample_00001", "t3", 0.0), ("sample_00002", "t1", 0.5), ("sample_00003", "t3", 1.5)]  # fmt: skip
    assert [p["closer"] for p in pairs] == [True, True, True]  # 0 <= 1, 0.5 <= 1, 1.5 <= 2
    assert (pairs[0]["sample_src"], pairs[0]["train_src"]) == ("sample/sample_00001.png", "train_nearest/t3.png")
    assert pairs[1]["sample_src"] is None and pairs[1]["train_src"] is None
    assert closest_pairs({"sample": {"copies": {"samples": SAMPLES}}}, tmp_path)[0]["pairs"][-1]["closer"] is False


def test_damaged_details_are_skipped_not_shown():
    damaged = {"a": {"train_id": 3, "distance": 1.0, "train_nn_distance": 1.0},
               "b": {"train_id": "t", "distance": float("nan"), "train_nn_distance": 1.0},
               "c": {"train_id": "t", "distance": True, "train_nn_distance": 1.0}, "d": "x"}  # fmt: skip
    evaluation = {"sample": {"copies": {"samples": damaged}, "kid": {"samples": [1, 2]}, "x": "y"}}
    assert closest_pairs(evaluation, Path(".")) == []
    assert closest_pairs({}, Path(".")) == []


def test_cell_page_shows_the_pairs_with_escaped_ids(tmp_path, make_store):
    metrics = {"psnr": {"value": 30.0, "std": 1.0, "n": 2}}
    out = make_store(tmp_path / "out", "closest", [("m1", "d1", 0, metrics, {"psnr": [29.0, 31.0]})])
    cell_dir = out / "cells" / "m1__d1__seed0"
    evaluation = json.loads((cell_dir / "eval.json").read_text())
    hostile = '<img src=x onerror="alert(1)">'
    evaluation["sample"] = {"copies": {"mean": 0.5, "samples": {"sample_00000": detail("tr0", 0.0),
                                                                "sample_00001": detail(hostile, 3.0)}}}  # fmt: skip
    (cell_dir / "eval.json").write_text(json.dumps(evaluation))
    png(cell_dir / "sample" / "sample_00000.png")
    png(cell_dir / "train_nearest" / "tr0.png")
    build_report(out)
    page = (cell_dir / "index.html").read_text()
    assert 'id="closest"' in page
    section = page[page.index('id="closest"') :]
    srcs = re.findall(r'<img src="([^"]+)"', section)
    assert srcs == ["sample/sample_00000.png", "train_nearest/tr0.png"]
    assert all((cell_dir / s).is_file() for s in srcs)
    assert hostile not in page and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in section
    assert section.count('class="pair flagged"') == 1  # d = 0 <= d_T; the other, 3 > 1, is not marked


def test_cell_page_without_memorisation_has_no_closest_section(tmp_path, make_store):
    out = make_store(tmp_path / "out", "plain", [("m1", "d1", 0, {"psnr": {"value": 30.0}}, None)])
    build_report(out)
    assert 'id="closest"' not in (out / "cells" / "m1__d1__seed0" / "index.html").read_text()
