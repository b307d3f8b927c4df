"""The HTML report: rebuilt from the results store alone (``bench report OUTPUT_DIR``).

Static and self-contained: inline CSS and JS, images referenced relative to the report,
so it opens from ``file://`` with no network. Rendered with autoescaping on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench_core.store import ResultsStore
from bench_core.tables import build_tables

_WIDTH, _HEIGHT = 420, 120


def curve_svg(points: list[dict[str, float]], key: str = "loss") -> str:
    """An inline SVG polyline of ``key`` over steps (log-scaled when it spans decades)."""
    import math

    pts = [(p["step"], p[key]) for p in points if key in p and math.isfinite(p[key])]
    if len(pts) < 2:
        return ""
    use_log = all(v > 0 for _, v in pts) and max(v for _, v in pts) / min(v for _, v in pts) > 20
    ys = [math.log10(v) if use_log else v for _, v in pts]
    x0, x1 = pts[0][0], pts[-1][0]
    y0, y1 = min(ys), max(ys)
    span_y = (y1 - y0) or 1.0
    coords = " ".join(
        f"{8 + (s - x0) / ((x1 - x0) or 1) * (_WIDTH - 16):.1f},{8 + (y1 - y) / span_y * (_HEIGHT - 24):.1f}"
        for (s, _), y in zip(pts, ys, strict=True)
    )
    label = f"{key}{' (log10)' if use_log else ''}: {pts[0][1]:.4g} → {pts[-1][1]:.4g} over {x1} steps"
    return (
        f'<svg width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img">'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>'
        f'<text x="8" y="{_HEIGHT - 4}" font-size="11" fill="#555">{_xml_escape(label)}</text></svg>'
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_report(output_dir: str | Path, extra_sections: list[dict[str, str]] | None = None) -> Path:
    """Render ``<output_dir>/index.html`` from the store in ``output_dir``; return its path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from bench_core import __version__

    output_dir = Path(output_dir)
    store = ResultsStore(output_dir)
    try:
        runs = store.runs()
        suite = runs[-1]["suite"] if runs else output_dir.name
        results = store.results(suite)
        cells = store.cells(suite)
    finally:
        store.close()
    latest = runs[-1] if runs else {"provenance": {}, "suite_hash": ""}
    summary: dict[str, Any] = {"done": 0, "failed": 0, "skipped": 0, "running": 0}
    for c in cells:
        summary[c["status"]] = summary.get(c["status"], 0) + 1
    suite_text = (output_dir / "suite.yaml").read_text() if (output_dir / "suite.yaml").exists() else ""
    env = Environment(loader=PackageLoader("bench_core", "report/templates"), autoescape=select_autoescape())
    page = env.get_template("index.html").render(
        suite=suite,
        description=_description(suite_text),
        summary=summary,
        tables=build_tables(results),
        problems=[c for c in cells if c["status"] in ("failed", "skipped")],
        done=[c for c in cells if c["status"] == "done"],
        sections=extra_sections or [],
        environment=json.dumps(latest["provenance"], indent=2, default=str),
        suite_hash=latest["suite_hash"],
        version=__version__,
        arrow=lambda h: "" if h is None else ("↑" if h else "↓"),
        curve_svg=curve_svg,
    )
    path = output_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _description(suite_text: str) -> str:
    import yaml

    try:
        data = yaml.safe_load(suite_text) or {}
    except yaml.YAMLError:
        return ""
    return str(data.get("description", "")) if isinstance(data, dict) else ""
