"""The HTML report from a store: escaping, rebuild, cell pages, provenance, comparability, speed section."""

import json
import subprocess
import sys

import pytest

from bench_core.api import BenchError
from bench_core.report.html import build_report, load_benchmarks

SSIM = {"value": 0.8, "std": 0.05, "n": 4, "settings": {"data_range": 1.0, "preset": "gaussian"}}


def test_labels_are_escaped(tmp_path, make_store):
    evil = "<script>alert(1)</script>"
    out = make_store(tmp_path / "r", "s", [(evil, "d", 0, {"ssim": SSIM}, {"ssim": [0.7, 0.8, 0.9, 0.8]})],
                     failed=("bad", "<img src=x onerror=alert(2)>"))  # fmt: skip
    index = build_report(out).read_text()
    assert evil not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "<img src=x" not in index and "&lt;img src=x onerror=alert(2)&gt;" in index
    cell_page = next((out / "cells").glob("*/index.html")).read_text()
    assert evil not in cell_page and "&lt;script&gt;" in cell_page


def test_rebuild_from_the_store_alone_is_identical(tmp_path, make_store):
    out = make_store(tmp_path / "r", "s", [("a", "d", s, {"ssim": SSIM}, {"ssim": [0.7, 0.8, 0.9]}) for s in (0, 1)])
    first = build_report(out).read_text()
    page = out / "cells" / "a__d__seed0" / "index.html"
    cell_first = page.read_text()
    page.unlink()
    (out / "index.html").unlink()
    assert build_report(out).read_text() == first and page.read_text() == cell_first


def test_cell_page_curves_grids_worst_items_and_provenance(tmp_path, make_store):
    values = [0.9, 0.2, 0.5, 0.95, 0.1]
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, {"ssim": SSIM, "mae": {"value": 0.1, "higher": False}},
                                            {"ssim": values, "mae": [0.1] * 5})])  # fmt: skip
    index = build_report(out).read_text()
    page = (out / "cells" / "a__d__seed0" / "index.html").read_text()
    assert page.count("<svg") == 2 and "loss" in page and "mse" in page  # one curve per recorded term
    assert 'src="recon_grid.png"' in page and "ground truth | prediction | |error|" in page
    # Worst by SSIM (preferred over mae), lowest first, with ground truth and prediction side by side.
    order = [page.index(f"<b>item_{i:03d}</b>") for i in (4, 1, 2, 0, 3)]
    assert order == sorted(order)
    assert 'src="gt/item_004.png"' in page and 'src="recon/item_004.png"' in page
    for html in (index, page):
        assert "hash-s" in html and "abc123" in html and ">dirty<" in html and "Test GPU 80GB" in html
        assert "torch 2.14.1" in html and "preset" in html and "wall clock of model calls" in html
        assert 'suite.yaml"' in html
    assert 'href="cells/a__d__seed0/index.html"' in index and 'href="../../index.html"' in page
    board = json.loads((out / "leaderboard.json").read_text())
    assert board[0]["rows"]["a"]["ssim"]["text"] == "0.8 ± 0.05"


def test_different_settings_are_apart_and_explained(tmp_path, make_store):
    skimage = {**SSIM, "value": 0.9, "settings": {"data_range": 1.0, "preset": "skimage"}}
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, {"ssim": SSIM}, None), ("b", "d", 0, {"ssim": skimage}, None)])
    index = build_report(out).read_text()
    assert "Not ranked: <b>ssim</b>" in index and "preset: &#34;gaussian&#34; (a); &#34;skimage&#34; (b)" in index
    # Only the ssim column is apart: both of its cells are marked unranked, neither is best; throughput still ranks.
    assert index.count('<td class=" unranked"') == 2 and 'class="best unranked' not in index
    assert 'class="best" data-value="100.0"' in index


def _benchmark_json(tmp_path):
    """A real pytest-benchmark JSON file, made by running pytest-benchmark on a tiny test."""
    (tmp_path / "test_tiny_speed.py").write_text(
        "import pytest\n\n@pytest.mark.benchmark(group='tiny')\ndef test_sum(benchmark):\n"
        "    benchmark.extra_info['items'] = 100\n    benchmark(sum, range(100))\n"
    )
    path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_tiny_speed.py"),
         "--benchmark-enable", "--benchmark-max-time=0.05", f"--benchmark-json={path}", "-o", "addopts="],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def test_benchmarks_import_and_kept_on_rebuild(tmp_path, make_store):
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, {"ssim": SSIM}, None)])
    path = _benchmark_json(tmp_path)
    speed = load_benchmarks(path)
    (row,) = speed["groups"]["tiny"]
    raw = json.loads(path.read_text())["benchmarks"][0]
    assert row["name"] == "test_sum" and row["mean"] == raw["stats"]["mean"] and row["rounds"] == raw["stats"]["rounds"]
    assert row["extra"] == {"items": 100}
    index = build_report(out, benchmarks=path).read_text()
    assert 'id="speed"' in index and "test_sum" in index and "items=100" in index and row["mean_text"] in index
    assert "test_sum" in build_report(out).read_text()  # the copy in the output dir keeps the section
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": [{"name": "x", "stats": {}}]}')
    with pytest.raises(BenchError, match="no stats.mean"):
        build_report(out, benchmarks=bad)
    bad.write_text("not json")
    with pytest.raises(BenchError, match="not a pytest-benchmark JSON"):
        load_benchmarks(bad)
