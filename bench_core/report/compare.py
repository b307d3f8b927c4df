"""``bench compare A B``: what changed between two runs, and whether it is more than noise.

A side is an output directory (or its ``results.sqlite``), optionally with ``::SUITE`` to
pick one suite of a store shared by several; without it, the suite of the store's latest
run. For every (dataset, task, model, metric) the two values are aggregated exactly as
the leaderboard aggregates them, and the difference B - A is set against the
seed-to-seed spread: the larger of the two standard deviations over seeds, or, for a
side with one seed, its standard deviation over test items divided by sqrt(n) (the
standard error of that one mean). Values computed with different metric settings are
listed but never judged.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core.fileio import write_atomic
from bench_core.report.jinja import engine_version, environment
from bench_core.results import StoredResults, load_results, provenance_context
from bench_core.rows import ResultRow
from bench_core.tables import Aggregate, aggregate, arrow, fmt_number, task_rank


@dataclass
class Noise:
    """The spread a difference is compared with, and what it was computed from."""

    value: float
    basis: str  # e.g. "σ seeds (A)" or "σ items/√n (B)"


@dataclass
class Difference:
    """One (dataset, task, model, metric) in both runs."""

    dataset: str
    task: str
    model: str
    metric: str
    higher: bool | None
    a: Aggregate | None
    b: Aggregate | None
    delta: float | None
    noise: Noise | None
    settings_differ: str  # which comparable settings differ ("" when they agree)

    @property
    def exceeds(self) -> bool | None:
        """|delta| > noise; ``None`` when it cannot be judged (a side missing, no spread, settings differ)."""
        if self.delta is None or self.noise is None or self.settings_differ:
            return None
        return abs(self.delta) > self.noise.value

    @property
    def verdict(self) -> str:
        """better / worse / changed / within noise / not comparable / only in A / only in B / n/a."""
        if self.a is None or self.b is None:
            return "only in B" if self.a is None else "only in A"
        if self.settings_differ:
            return "not comparable"
        if self.exceeds is None:
            return "n/a"
        if not self.exceeds:
            return "within noise"
        if self.higher is None:
            return "changed"
        return "better" if (self.delta > 0) == self.higher else "worse"

    def delta_text(self) -> str:
        """The signed difference B - A, formatted like the table values."""
        if self.delta is None:
            return "–"
        return ("+" if self.delta > 0 else "") + fmt_number(self.delta, 4)

    def noise_text(self) -> str:
        """The spread and its basis, or n/a."""
        return "n/a" if self.noise is None else f"{fmt_number(self.noise.value, 2)} ({self.noise.basis})"


def parse_side(text: str | Path) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR::SUITE`` -> (path, suite or None)."""
    raw = str(text)
    if "::" in raw:
        path, suite = raw.rsplit("::", 1)
        return Path(path), suite or None
    return Path(raw), None


def _side_noise(agg: Aggregate, side: str) -> Noise | None:
    if agg.spread is None:
        return None
    if agg.spread_over == "seeds":
        return Noise(agg.spread, f"σ seeds ({side})")
    if agg.spread_over == "items" and agg.n_items:
        return Noise(agg.spread / math.sqrt(agg.n_items), f"σ items/√n ({side})")
    return None


def differences(a: StoredResults, b: StoredResults) -> list[Difference]:
    """Every (dataset, task, model, metric) of either side, with both values, delta and noise."""
    grouped: dict[tuple[str, str, str, str], dict[str, list[ResultRow]]] = defaultdict(lambda: {"A": [], "B": []})
    directions: dict[tuple[str, str, str, str], bool | None] = {}
    for side, data in (("A", a), ("B", b)):
        for row in data.results:
            key = (row.dataset, row.task, row.model, row.metric)
            grouped[key][side].append(row)
            directions[key] = row.higher_is_better
    out = []
    for key in sorted(grouped, key=lambda k: (k[0], task_rank(k[1]), k[1], k[2], k[3])):
        sides = grouped[key]
        agg_a = aggregate(sides["A"], a.per_item) if sides["A"] else None
        agg_b = aggregate(sides["B"], b.per_item) if sides["B"] else None
        delta = noise = None
        differ = ""
        if agg_a is not None and agg_b is not None:
            if agg_a.sort_value is not None and agg_b.sort_value is not None:
                delta = agg_b.mean - agg_a.mean
            candidates = [n for n in (_side_noise(agg_a, "A"), _side_noise(agg_b, "B")) if n is not None]
            noise = max(candidates, key=lambda n: n.value) if candidates else None
            differ = _settings_diff(sides["A"], sides["B"])
        out.append(Difference(*key, directions[key], agg_a, agg_b, delta, noise, differ))
    return out


def _settings_diff(rows_a: list[ResultRow], rows_b: list[ResultRow]) -> str:
    def variants(rows):
        return {json.dumps(r.settings, sort_keys=True, default=str) for r in rows}

    va, vb = variants(rows_a), variants(rows_b)
    if va == vb and len(va) == 1:
        return ""
    sa = [json.loads(v) for v in sorted(va)]
    sb = [json.loads(v) for v in sorted(vb)]
    keys = sorted({k for s in sa + sb for k in s})
    parts = []
    for k in keys:
        values_a = sorted({json.dumps(s.get(k), default=str) for s in sa})
        values_b = sorted({json.dumps(s.get(k), default=str) for s in sb})
        if values_a != values_b or len(values_a) > 1:
            parts.append(f"{k}: A {'/'.join(values_a)}, B {'/'.join(values_b)}")
    return "; ".join(parts) or "settings differ"


def _side_label(data: StoredResults, given: str | Path) -> dict[str, Any]:
    prov = provenance_context(data)
    return {"given": str(given), "dir": str(data.output_dir), "suite": data.suite, "runs": prov["runs"],
            "suite_hashes": prov["suite_hashes"]}  # fmt: skip


def to_markdown(diffs: list[Difference], side_a: dict[str, Any], side_b: dict[str, Any]) -> str:
    """The comparison as a Markdown document."""
    lines = ["# Comparison", ""]
    for name, side in (("A", side_a), ("B", side_b)):
        commits = ", ".join(f"{r['commit']} ({r['dirty']})" for r in side["runs"]) or "no runs"
        lines.append(f"- **{name}**: `{side['given']}` (suite {side['suite']}, hash {', '.join(side['suite_hashes'])}; "
                     f"commit {commits})")  # fmt: skip
    lines += [
        "",
        "Δ = B − A. Noise: the larger seed-to-seed spread of the two sides (σ over seeds, or σ over test items / √n "
        "for a side with one seed). **Bold** Δ: |Δ| exceeds the noise.",
        "",
        "| dataset | task | model | metric | A | B | Δ | noise | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        delta = f"**{d.delta_text()}**" if d.exceeds else d.delta_text()
        verdict = d.verdict + (f" ({d.settings_differ})" if d.settings_differ else "")
        cells = [d.dataset, d.task, d.model, f"{d.metric} {arrow(d.higher)}".strip(),
                 d.a.text() if d.a else "–", d.b.text() if d.b else "–", delta, d.noise_text(), verdict]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def compare(a: str | Path, b: str | Path, out: Path) -> tuple[Path, Path]:
    """Compare run A with run B; write ``out/compare.html`` and ``out/compare.md`` and return both paths.

    ``a`` and ``b`` are output directories (or ``results.sqlite`` files), each optionally
    suffixed with ``::SUITE``; they may name the same store with different suites.
    """
    data_a = load_results(*parse_side(a))
    data_b = load_results(*parse_side(b))
    diffs = differences(data_a, data_b)
    side_a, side_b = _side_label(data_a, a), _side_label(data_b, b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "compare.html", out / "compare.md"
    counts: dict[str, int] = defaultdict(int)
    for d in diffs:
        counts[d.verdict] += 1
    html = (
        environment()
        .get_template("compare.html")
        .render(
            suite=f"{data_a.suite} vs {data_b.suite}",
            root="",
            version=engine_version(),
            arrow=arrow,
            diffs=diffs,
            side_a=side_a,
            side_b=side_b,
            counts=dict(sorted(counts.items())),
        )
    )
    write_atomic(html_path, html)
    write_atomic(md_path, to_markdown(diffs, side_a, side_b))
    return html_path, md_path
