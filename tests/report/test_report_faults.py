"""Faults around the report: concurrent writers of one output folder, damaged cell files."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from bench_core.report.html import build_report

SSIM = {"value": 0.8, "std": 0.05, "n": 3, "settings": {"data_range": 1.0}}

# Rebuild the report of argv[1] argv[2] times in one process (no interpreter start per rebuild).
_REBUILD = """
import sys
from bench_core.report.html import build_report
for _ in range(int(sys.argv[2])):
    build_report(sys.argv[1])
"""


def test_concurrent_report_writers_never_fail_nor_show_half_a_page(tmp_path, make_store):
    # A long failure message makes index.html about 2 MB, so writing it takes long enough for writers to overlap.
    cells = [(m, "d", s, {"ssim": SSIM}, {"ssim": [0.7, 0.8, 0.9]}) for m in ("a", "b") for s in (0, 1)]
    out = make_store(tmp_path / "r", "s", cells, failed=("bad", "x" * 1_000_000))
    pages = [out / "index.html", out / "cells" / "a__d__seed0" / "index.html"]
    # cwd=out: bench_core comes from the installed package (or PYTHONPATH), not from pytest's working folder.
    subprocess.run([sys.executable, "-c", _REBUILD, str(out), "1"], cwd=out, check=True)
    torn: list[str] = []
    stop = threading.Event()

    def read_pages() -> None:
        while not stop.is_set():
            for page in pages:
                try:
                    text = page.read_text(encoding="utf-8")
                except OSError as exc:
                    text = repr(exc)
                if not text.rstrip().endswith("</html>"):
                    torn.append(f"{page.name}: {len(text)} characters ending {text[-40:]!r}")

    reader = threading.Thread(target=read_pages)
    reader.start()
    try:
        command = [sys.executable, "-c", _REBUILD, str(out), "25"]
        writers = [subprocess.Popen(command, cwd=out, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        errors = [w.communicate(timeout=300)[1] for w in writers]
    finally:
        stop.set()
        reader.join()
    assert [w.returncode for w in writers] == [0, 0, 0], "\n".join(errors)
    assert not torn, torn[:3]
    assert not list(out.rglob("*.tmp")), "a writer left its temporary file behind"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[1, 2]", id="list"),
        pytest.param(b'{"recon": 5}', id="task-not-object"),
        pytest.param(b'{"recon": {"ssim": {"per_file": [0.5, 0.7]}}}', id="per-file-list"),
        pytest.param(b'{"recon": {"ssim": {"per_file": {"a": "x"}}}}', id="per-file-text"),
        pytest.param(b'{"recon": ', id="cut-short"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_eval_json_of_the_wrong_shape_is_reported_as_damaged(tmp_path, make_store, caplog, content):
    cells = [(m, "d", 0, {"ssim": SSIM}, {"ssim": [0.7, 0.8, 0.9]}) for m in ("a", "b")]
    out = make_store(tmp_path / "r", "s", cells)
    damaged = out / "cells" / "a__d__seed0" / "eval.json"
    damaged.write_bytes(content)
    index = build_report(out).read_text()
    assert f"{damaged} is damaged" in caplog.text and "without its per-item values" in caplog.text
    assert 'href="cells/a__d__seed0/index.html"' in index  # the cell stays in the report, without its galleries
    assert "item_000" not in (out / "cells" / "a__d__seed0" / "index.html").read_text()
    assert "item_000" in (out / "cells" / "b__d__seed0" / "index.html").read_text()
