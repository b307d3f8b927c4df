"""``compare``: deltas between two stores, or two suites of one store, against hand-computed values."""

import math

import pytest

from bench_core.report.compare import compare, differences, parse_side
from bench_core.results import load_results


def ssim(value, std=0.04, n=4, preset="gaussian"):
    return {"ssim": {"value": value, "std": std, "n": n, "settings": {"data_range": 1.0, "preset": preset}}}


def test_two_stores_deltas_and_noise(tmp_path, make_store):
    a = make_store(tmp_path / "a", "s", [("m", "d", 0, ssim(0.70), None), ("m", "d", 1, ssim(0.72), None),
                                         ("k", "d", 0, ssim(0.50), None)])  # fmt: skip
    b = make_store(tmp_path / "b", "s", [("m", "d", 0, ssim(0.80), None), ("m", "d", 1, ssim(0.86), None),
                                         ("k", "d", 0, ssim(0.51, std=0.08, n=16), None),
                                         ("new", "d", 0, ssim(0.6), None)])  # fmt: skip
    diffs = {(d.model, d.metric): d for d in differences(load_results(a), load_results(b))}
    m = diffs[("m", "ssim")]
    # A: mean 0.71, σ seeds 0.01414; B: mean 0.83, σ seeds 0.04243 -> noise 0.04243 (B), delta +0.12.
    assert m.delta == pytest.approx(0.12) and m.noise.value == pytest.approx(math.sqrt(2) * 0.03)
    assert m.noise.basis == "σ seeds (B)" and m.exceeds and m.verdict == "better"
    k = diffs[("k", "ssim")]
    # One seed each: σ items/√n = 0.04/2 = 0.02 (A) and 0.08/4 = 0.02 (B); delta 0.01 is within it.
    assert k.delta == pytest.approx(0.01) and k.noise.value == pytest.approx(0.02) and "σ items/√n" in k.noise.basis
    assert not k.exceeds and k.verdict == "within noise"
    assert diffs[("new", "ssim")].verdict == "only in B"
    assert diffs[("m", "images_per_s")].delta == pytest.approx(0.0)
    html, md = compare(a, b, tmp_path / "cmp")
    text = md.read_text()
    assert "| d | recon | m | ssim ↑ | 0.71 ± 0.014 | 0.83 ± 0.042 | **+0.12** | 0.042 (σ seeds (B)) | better |" in text
    assert (
        "| d | recon | k | ssim ↑ | 0.5 ± 0.04 | 0.51 ± 0.08 | +0.01 | 0.02 (σ items/√n (A)) | within noise |" in text
    )
    assert "+0.12" in html.read_text() and "only in B" in html.read_text()


def test_two_suites_in_one_store_and_settings_gate(tmp_path, make_store):
    out = tmp_path / "shared"
    make_store(out, "old", [("m", "d", 0, ssim(0.7), None)])
    make_store(out, "new", [("m", "d", 0, ssim(0.9, preset="skimage"), None)])
    assert parse_side(f"{out}::old") == (out, "old")
    html, md = compare(f"{out}::old", f"{out}::new", tmp_path / "cmp")
    text = md.read_text()
    assert 'not comparable (preset: A "gaussian", B "skimage")' in text
    assert "**+0.2**" not in text  # never judged across different settings
    assert "(suite old" in text and "(suite new" in text
