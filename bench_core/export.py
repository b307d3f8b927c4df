"""``bench export``: stored results as CSV, JSON, Parquet, Markdown or LaTeX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.fileio import write_atomic
from bench_core.jsonvalues import dumps, encode_nonfinite
from bench_core.results import all_rows, load_results
from bench_core.store import STORE_NAME
from bench_core.tables import build_tables, to_latex, to_markdown


def export(output_dir: Path, fmt: str, out: Path | None = None) -> str:
    """Export the store in ``output_dir``; text formats return their text when ``out`` is None.

    Binary or tabular formats (csv, json, parquet) are written to ``out`` (default
    ``<output_dir>/results.<ext>``) and the path is returned: one record per stored row with
    the columns of docs/outputs.md. In CSV and JSON a non-finite number is the text ``nan``,
    ``inf`` or ``-inf`` (:mod:`bench_core.jsonvalues`) and a missing one empty or ``null``.
    Markdown and LaTeX tables are built from exactly what the HTML report reads (the latest
    run's suite, with the cells' per-item values for the intervals), so they show the same numbers.
    """
    if not (output_dir / STORE_NAME).exists():
        raise BenchError(f"no results store ({STORE_NAME}) in {output_dir}")
    if fmt in ("markdown", "latex"):
        data = load_results(output_dir)
        tables = build_tables(data.results, data.per_item, data.metric_rank)
        text = to_markdown(tables) if fmt == "markdown" else to_latex(tables)
        if out is None:
            return text
        write_atomic(out, text)
        return str(out)
    records = _records(output_dir)
    ext = {"csv": "csv", "json": "json", "parquet": "parquet"}[fmt]
    out = out or output_dir / f"results.{ext}"
    # Rendered in memory, then written atomically: another export or report may share the folder.
    if fmt == "csv":
        import pandas as pd

        content: str | bytes = pd.DataFrame([encode_nonfinite(r) for r in records]).to_csv(index=False)
    elif fmt == "json":
        content = dumps(records, indent=1)
    else:
        content = _parquet(records)
    write_atomic(out, content)
    return str(out)


def _records(output_dir: Path) -> list[dict[str, Any]]:
    """Every stored row (:func:`bench_core.results.all_rows`), its settings, provenance and counters as JSON text."""
    records = all_rows(output_dir)
    for record in records:
        for column in ("settings", "provenance", "counters"):
            record[column] = dumps(record[column], sort_keys=True, default=str)
    return records


def _parquet(records: list[dict[str, Any]]) -> bytes:
    """The rows as Parquet; floats stay floats (NaN and infinities as such, a missing value as null)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BenchError(f"parquet export needs pyarrow ({exc}); pip install pyarrow") from None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue().to_pybytes()
