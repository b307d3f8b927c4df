"""``bench export``: stored results as CSV, JSON, Parquet, Markdown or LaTeX."""

from __future__ import annotations

import json
from pathlib import Path

from bench_core.api import BenchError
from bench_core.fileio import write_atomic
from bench_core.results import all_rows, load_results
from bench_core.store import STORE_NAME
from bench_core.tables import build_tables, to_latex, to_markdown


def export(output_dir: Path, fmt: str, out: Path | None = None) -> str:
    """Export the store in ``output_dir``; text formats return their text when ``out`` is None.

    Binary or tabular formats (csv, json, parquet) are written to ``out`` (default
    ``<output_dir>/results.<ext>``) and the path is returned. Markdown and LaTeX tables are
    built from exactly what the HTML report reads (the latest run's suite, with the cells'
    per-item values for the intervals), so they show the same numbers.
    """
    if not (output_dir / STORE_NAME).exists():
        raise BenchError(f"no results store ({STORE_NAME}) in {output_dir}")
    if fmt in ("markdown", "latex"):
        data = load_results(output_dir)
        tables = build_tables(data.results, data.per_item)
        text = to_markdown(tables) if fmt == "markdown" else to_latex(tables)
        if out is None:
            return text
        write_atomic(out, text)
        return str(out)
    import pandas as pd

    frame = pd.DataFrame(all_rows(output_dir))
    for column in ("settings", "provenance", "counters"):
        if column in frame:
            frame[column] = frame[column].map(lambda v: json.dumps(v, sort_keys=True))
    ext = {"csv": "csv", "json": "json", "parquet": "parquet"}[fmt]
    out = out or output_dir / f"results.{ext}"
    # Rendered in memory, then written atomically: another export or report may share the folder.
    if fmt == "csv":
        content: str | bytes = frame.to_csv(index=False)
    elif fmt == "json":
        content = frame.to_json(orient="records", indent=1)
    else:
        try:
            content = frame.to_parquet(index=False)
        except ImportError as exc:
            raise BenchError(f"parquet export needs pyarrow ({exc}); pip install pyarrow") from None
    write_atomic(out, content)
    return str(out)
