"""The report's plots (bench_core/report/plots.py): the data each plot draws, read back from its SVG.

Positions are checked through the SVG itself: each model's point is the group with id
``<plot>-point-<i>``, and on linear axes its pixel position must be the same affine function of
the data as every other point's, with the larger value higher up; baselines and the paired
comparison's items are checked the same way.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench_core.report.html import build_report
from bench_core.report.plots import (
    curves_plot,
    headline_metric,
    paired_plot,
    pareto_front,
    pareto_plot,
    sanitise_svg,
)
from bench_core.results import StoredResults
from bench_core.rows import ResultRow
from bench_core.tables import build_tables

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script> & $x^2$'


def row(model: str, metric: str, value: float, higher: bool | None = True, **extra) -> ResultRow:
    kind = extra.pop("kind", "baseline" if model.startswith("baseline:") else "metric")
    return ResultRow(model=model, dataset="d", task="recon", metric=metric, value=value, higher_is_better=higher,
                     cell_key=f"{model}-0", kind=kind, **extra)  # fmt: skip


def speed(model: str, value: float) -> ResultRow:
    return row(model, "images_per_s", value, kind="throughput")


def stored(rows: list[ResultRow], cells: list[dict] | None = None, evals: dict | None = None) -> StoredResults:
    return StoredResults(Path("."), "s", [], rows, cells or [], evals=evals or {})


def positions(svg: str, gid_suffix: str) -> list[tuple[float, float]]:
    """Pixel positions of the markers (``use`` elements) in the group whose id ends with ``gid_suffix``."""
    groups = [g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("id", "").endswith(gid_suffix)]
    assert len(groups) == 1, f"{len(groups)} groups {gid_suffix}"
    return [(float(u.get("x")), float(u.get("y"))) for u in groups[0].iter(f"{SVG}use")]


def assert_affine(data: list[float], pixels: list[float], increasing: bool) -> None:
    """``pixels`` are one affine function of ``data`` (fitted on the extremes), growing with it if ``increasing``."""
    i, j = data.index(min(data)), data.index(max(data))
    slope = (pixels[j] - pixels[i]) / (data[j] - data[i])
    assert (slope > 0) == increasing
    for d, p in zip(data, pixels, strict=True):
        assert p == pytest.approx(pixels[i] + slope * (d - data[i]), abs=0.05)


def texts(svg: str) -> list[str]:
    return ["".join(t.itertext()) for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_pareto_front_by_hand():
    # B (2, 0.8) is beaten by nothing; D (2, 0.7) by B; E (1, 0.6) by A (1, 0.9).
    points = [(1, 0.9), (2, 0.8), (3, 0.5), (2, 0.7), (1, 0.6)]
    assert pareto_front(points, higher=True) == [0, 1, 2]
    assert pareto_front([(x, 1 - y) for x, y in points], higher=False) == [0, 1, 2]
    assert pareto_front([(1, 0.5), (1, 0.5)], higher=True) == [0, 1]  # equal points dominate neither
    assert pareto_front([(3, 0.1), (1, 0.9)], higher=False) == [0]  # faster and better


MODELS = {"a": (20.0, 0.90), "b": (40.0, 0.80), "c": (60.0, 0.50), "d": (40.0, 0.60)}


def pareto_rows() -> list[ResultRow]:
    rows = []
    for model, (ips, value) in MODELS.items():
        rows += [row(model, "ssim", value, ci_low=value - 0.02, ci_high=value + 0.02), speed(model, ips)]
    return rows + [row("baseline:mean-image", "ssim", 0.7)]


def test_pareto_plot_has_one_point_per_model_at_its_data():
    (table,) = build_tables(pareto_rows())
    plot = pareto_plot(table, "ssim", "p0")
    root = ET.fromstring(plot.svg)  # well-formed XML
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert all(i.startswith("p0-") for i in ids) and len(ids) == len(set(ids))
    points = [positions(plot.svg, f"-point-{i}") for i in range(len(MODELS))]
    assert all(len(p) == 1 for p in points) and not positions_any(plot.svg, f"-point-{len(MODELS)}")
    xs, ys = [p[0][0] for p in points], [p[0][1] for p in points]
    throughput, values = [v[0] for v in MODELS.values()], [v[1] for v in MODELS.values()]
    assert_affine(throughput, xs, increasing=True)
    assert_affine(values, ys, increasing=False)  # SVG y grows downwards: a better ssim sits higher
    # The baseline's line sits at 0.7 on the same scale.
    line = next(g for g in root.iter(f"{SVG}g") if g.get("id", "").endswith("-baseline-0"))
    y_line = float(re.findall(r"L\s*[-\d.]+\s+([-\d.]+)", line.find(f".//{SVG}path").get("d"))[0])
    slope = (ys[0] - ys[2]) / (0.90 - 0.50)
    assert y_line == pytest.approx(ys[2] + slope * (0.7 - 0.50), abs=0.05)
    # a, b, c are the front (filled); d, as fast as b and worse, is hollow.
    hollow = [_fill(root, f"-point-{i}") == "#ffffff" for i in range(4)]
    assert hollow == [False, False, False, True]
    assert "ssim (↑ higher is better)" in texts(plot.svg)
    assert "recon throughput, images/s (↑ higher is better)" in texts(plot.svg)


def positions_any(svg: str, gid_suffix: str) -> bool:
    return any(g.get("id", "").endswith(gid_suffix) for g in ET.fromstring(svg).iter(f"{SVG}g"))


def _fill(root: ET.Element, gid_suffix: str) -> str:
    group = next(g for g in root.iter(f"{SVG}g") if g.get("id", "").endswith(gid_suffix))
    return re.search(r"fill:\s*(#\w+)", group.find(f".//{SVG}use").get("style")).group(1)


def test_pareto_plot_says_which_models_it_leaves_out():
    rows = pareto_rows() + [row("e", "ssim", float("nan")), speed("e", 10.0), row("f", "ssim", 0.4)]
    (table,) = build_tables(rows)
    plot = pareto_plot(table, "ssim", "p1")
    assert len([g for g in ET.fromstring(plot.svg).iter(f"{SVG}g") if "-point-" in g.get("id", "")]) == 4
    assert plot.caption.endswith("Not plotted (no throughput or no finite ssim): e, f.")


def test_hostile_model_names_are_text_not_markup():
    rows = [row(HOSTILE, "ssim", 0.9), speed(HOSTILE, 10.0), row("ok", "ssim", 0.8), speed("ok", 20.0)]
    (table,) = build_tables(rows)
    svg = pareto_plot(table, "ssim", "h").svg
    root = ET.fromstring(svg)
    assert "<script" not in svg and not root.findall(f".//{SVG}script")
    assert not [a for el in root.iter() for a in el.attrib if a.lower().startswith("on")]
    assert HOSTILE in texts(svg)  # the legend shows the name itself: escaped on output, no mathtext


def test_sanitiser_keeps_drawing_and_drops_everything_else():
    hostile = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10pt" '
        'onload="alert(1)"><style>*{display:none}</style><script>alert(2)</script><metadata>x</metadata>'
        '<defs><clipPath id="c1"><rect x="0" y="0" width="5" height="5"/></clipPath>'
        '<path id="m1" d="M 0 0 L 1 1"/></defs>'
        '<g id="g1" clip-path="url(#c1)" onclick="alert(3)"><use xlink:href="#m1" x="1" y="2"/>'
        '<use xlink:href="http://evil.example/x.svg#m"/><path d="M 0 0" style="fill: url(http://evil.example/p)"/>'
        '<text>&lt;b&gt;name&lt;/b&gt;</text></g><a href="http://evil.example"><text>link</text></a>'
        '<foreignObject><div xmlns="http://www.w3.org/1999/xhtml">html</div></foreignObject>'
        '<image href="http://evil.example/i.png"/></svg>'
    )
    out = sanitise_svg(hostile, "q", 'a "label"')
    root = ET.fromstring(out)
    tags = {el.tag.rsplit("}", 1)[-1] for el in root.iter()}
    assert tags == {"svg", "defs", "clipPath", "rect", "path", "g", "use", "text"}
    assert "alert" not in out and "evil.example" not in out and "width" not in root.attrib
    assert sorted(el.get("id") for el in root.iter() if el.get("id")) == ["q-c1", "q-g1", "q-m1"]
    group = root.find(f"{SVG}g")
    assert group.get("clip-path") == "url(#q-c1)"
    assert [u.get("{http://www.w3.org/1999/xlink}href") for u in group.iter(f"{SVG}use")] == ["#q-m1", None]
    assert "&lt;b&gt;name&lt;/b&gt;" in out and texts(out) == ["<b>name</b>"]
    assert root.get("role") == "img" and root.get("aria-label") == 'a "label"'


PER_ITEM = {"a": [0.9, 0.7, 0.5, 0.8], "b": [0.6, 0.9, 0.4, 0.7], "c": [0.1, 0.2, 0.3, 0.2]}


def paired_data(higher: bool = True) -> tuple[StoredResults, object]:
    rows, cells, evals = [], [], {}
    for model, values in PER_ITEM.items():
        rows.append(row(model, "ssim", sum(values) / len(values), higher=higher))
        cells.append({"cell_key": f"{model}-0", "model": model, "dataset": "d", "seed": 0, "status": "done",
                      "details": {}})  # fmt: skip
        evals[f"{model}-0"] = {"recon": {"ssim": {"per_file": {f"i{k}": v for k, v in enumerate(values)}}}}
    data = stored(rows, cells, evals)
    (table,) = build_tables(rows)
    return data, table


def test_paired_plot_scatters_the_two_best_models_items():
    data, table = paired_data()
    plot = paired_plot(table, "ssim", data, "c0")
    pts = positions(plot.svg, "-items")
    assert len(pts) == 4  # one point per test item
    assert_affine(PER_ITEM["a"], [x for x, _ in pts], increasing=True)  # a (best mean, 0.725) across
    assert_affine(PER_ITEM["b"], [y for _, y in pts], increasing=False)  # b (0.65) up
    assert "b is better on 1 items, a on 3, 0 tie" in plot.caption
    assert positions_any(plot.svg, "-diagonal") and "a: ssim (↑ higher is better)" in texts(plot.svg)


def test_paired_plot_lower_is_better_picks_the_lowest_two():
    data, table = paired_data(higher=False)
    plot = paired_plot(table, "ssim", data, "c1")
    assert "c (best mean) across, b (second) up" in plot.caption  # c: 0.2, b: 0.65, a: 0.725
    assert "b is better on 0 items, c on 4" in plot.caption


def test_paired_plot_pairs_items_by_id_and_counts_the_unmatched():
    data, table = paired_data()
    data.evals["b-0"]["recon"]["ssim"]["per_file"] = {"i1": 0.9, "i3": 0.7, "extra": 0.1}
    plot = paired_plot(table, "ssim", data, "c3")
    pts = positions(plot.svg, "-items")
    assert_affine([0.7, 0.8], [x for x, _ in pts], increasing=True)  # a's values of items i1 and i3
    assert "(2 items;" in plot.caption and plot.caption.endswith("3 items with a value for only one of the two "
                                                                 "are left out.")  # fmt: skip


def test_paired_plot_needs_per_item_values_of_both():
    data, table = paired_data()
    data.evals.pop("b-0")
    assert paired_plot(table, "ssim", data, "c2") is None


def test_headline_metric_follows_the_plugins_and_never_throughput():
    def reading(model, metric, value, head, **kw):
        return row(model, metric, value, provenance={"headline": head}, **kw)

    rows = [reading("a", "aa", 1.0, False), reading("a", "mm", 2.0, True), reading("a", "zz", 3.0, True),
            reading("a", "nn", 4.0, True, higher=None), reading("a", "ab", 5.0, True, kind="model"),
            speed("a", 9.0)]  # fmt: skip
    (table,) = build_tables(rows)
    assert headline_metric(table, rows) == "mm"  # the first headline of the table; ab is the model's own number
    no_heads = [r.with_provenance(headline=False) for r in rows]
    (table,) = build_tables(no_heads)
    assert headline_metric(table, no_heads) == "aa"  # no headline: the first ranked metric
    differing = rows + [reading("b", "mm", 2.0, True, settings={"window": 7})]
    (table,) = build_tables(differing)
    assert "mm" in table.incomparable and headline_metric(table, differing) == "zz"
    only_speed = [speed("a", 9.0), row("b", "images_per_s", 9.0),  # an older store's kind
                  reading("a", "nn", 4.0, True, higher=None)]  # fmt: skip
    (table,) = build_tables(only_speed)
    assert headline_metric(table, only_speed) is None


def curve_cell(model: str, seed: int, stages: dict[str, list[float]], dataset: str = "d") -> dict:
    return {"cell_key": f"{model}-{seed}", "model": model, "dataset": dataset, "seed": seed, "status": "done",
            "details": {"stages": [{"stage": s, "curve": [{"step": i + 1, "loss": v} for i, v in enumerate(loss)]}
                                   for s, loss in stages.items()]}}  # fmt: skip


def test_curves_plot_one_collection_per_model_and_stage_log_when_it_spans_decades():
    cells = [
        curve_cell("a", 0, {"ae": [10.0, 1.0, 0.1]}),
        curve_cell("a", 1, {"ae": [9.0, 2.0, 0.2]}),
        curve_cell("b", 0, {"ae": [5.0, 4.0], "prior": [3.0, 2.5]}),
        curve_cell("c", 0, {"ae": [float("nan"), 1.0]}),
    ]  # fmt: skip  (c: one finite loss, no line)
    plot = curves_plot(cells, "d", "k0")
    root = ET.fromstring(plot.svg)
    groups = [g.get("id") for g in root.iter(f"{SVG}g") if re.fullmatch(r"k0-curve-\d+", g.get("id", ""))]
    assert groups == ["k0-curve-0", "k0-curve-1", "k0-curve-2"]  # a/ae (two seeds), b/ae, b/prior
    seeds = root.find(f".//{SVG}g[@id='k0-curve-0']").findall(f".//{SVG}path")
    assert len(seeds) == 2
    assert "training loss (↓ lower is better), log scale" in texts(plot.svg)
    assert {"a", "b (ae)", "b (prior)"} <= set(texts(plot.svg))
    flat = curves_plot([curve_cell("a", 0, {"ae": [1.0, 0.9]})], "d", "k1")
    assert "training loss (↓ lower is better)" in texts(flat.svg)
    assert curves_plot([curve_cell("c", 0, {"ae": [1.0]})], "d", "k2") is None


def test_plots_are_deterministic():
    (table,) = build_tables(pareto_rows())
    assert pareto_plot(table, "ssim", "p").svg == pareto_plot(table, "ssim", "p").svg


def test_report_page_has_the_plots_of_every_dataset(tmp_path, make_store):
    metrics = {"psnr": {"value": 30.0, "std": 1.0, "n": 4}, "ssim": {"value": 0.8, "std": 0.1, "n": 4}}
    cells = [(model, dataset, 0, {k: {**v, "value": v["value"] + i} for k, v in metrics.items()},
              {"psnr": [29.0 + i, 30.0, 31.0 - i, 30.0]})  # psnr: the first ranked metric, the headline
             for dataset in ("d1", "d2") for i, model in enumerate(["m1", HOSTILE])]  # fmt: skip
    out = make_store(tmp_path / "out", "plots", cells)
    page = build_report(out).read_text()
    section = page[page.index('<section id="plots">') : page.index("</section>", page.index('<section id="plots">'))]
    svgs = re.findall(r"<svg .*?</svg>", section, flags=re.S)
    assert len(svgs) == 6  # per dataset: quality against throughput, the paired items, training curves
    for svg in svgs:
        ET.fromstring(svg)
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # unique on the page
    assert "<script>alert" not in section and "&lt;script&gt;" in section
    assert 'href="#plots"' in page
