"""Tests of ``bench score``: folder matching, intensity mapping, streaming and output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bench_core.api import BenchError, PluginError
from bench_core.plugins import load_registry
from bench_core.score import NIFTI_RANGE_MESSAGE, ImageFolders, score


@pytest.fixture(scope="module")
def registry():
    """The installed plugins (psnr and ssim are built in)."""
    return load_registry()


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _nii(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.eye(4)), str(path))


def _offset_pngs(tmp_path: Path, n: int = 5, offset: int = 10) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(n):
        ref = rng.integers(0, 256 - offset, size=(24, 20), dtype=np.uint8)
        _png(tmp_path / "ref" / f"img{i}.png", ref)
        _png(tmp_path / "pred" / f"img{i}.png", (ref + offset).astype(np.uint8))
    return tmp_path / "pred", tmp_path / "ref"


def test_png_constant_offset_psnr_and_per_file(tmp_path, registry):
    pred, ref = _offset_pngs(tmp_path, n=5)
    result = score(ImageFolders(pred, ref), ["psnr"], registry, batch_size=2)  # 3 batches: 2, 2, 1
    psnr = result.metrics["psnr"]
    expected = 20 * math.log10(255 / 10)
    assert psnr.value == pytest.approx(expected, abs=1e-4)
    assert psnr.n == 5
    assert psnr.std == pytest.approx(0.0, abs=1e-4)
    assert sorted(psnr.per_file) == [f"img{i}" for i in range(5)]
    assert all(v == pytest.approx(expected, abs=1e-4) for v in psnr.per_file.values())
    assert result.dims == 2
    assert result.provenance["mapping"] == ["8-bit PNG: value / 255"]
    assert "psnr" in result.table()


def test_ssim_identical_is_one_and_rgba_drops_alpha(tmp_path, registry):
    rng = np.random.default_rng(1)
    for i in range(3):
        rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        _png(tmp_path / "ref" / f"x{i}.png", rgb)
        alpha = rng.integers(0, 256, size=(32, 32, 1), dtype=np.uint8)
        _png(tmp_path / "pred" / f"x{i}.png", np.concatenate([rgb, alpha], axis=-1))  # RGBA
    result = score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["ssim", "psnr"], registry)
    assert result.metrics["ssim"].value == pytest.approx(1.0, abs=1e-9)
    assert set(result.metrics["ssim"].per_file) == {"x0", "x1", "x2"}
    assert result.metrics["psnr"].value == pytest.approx(100.0)  # identical items hit the cap


def test_16bit_png_uses_65535(tmp_path, registry):
    ref = np.full((16, 16), 30000, dtype=np.uint16)
    _png(tmp_path / "ref" / "a.png", ref)
    _png(tmp_path / "pred" / "a.png", ref + 655)
    result = score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["psnr"], registry)
    assert result.metrics["psnr"].value == pytest.approx(20 * math.log10(65535 / 655), abs=1e-4)
    assert result.provenance["mapping"] == ["16-bit PNG: value / 65535"]


def test_unmatched_names_are_listed(tmp_path, registry):
    pred, ref = _offset_pngs(tmp_path, n=2)
    _png(pred / "only_pred.png", np.zeros((4, 4), np.uint8))
    _png(ref / "only_ref.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(BenchError, match="only_pred") as info:
        score(ImageFolders(pred, ref), ["psnr"], registry)
    assert "only_ref" in str(info.value)
    assert "1 in" in str(info.value)


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_missing_or_empty_folder(tmp_path, registry, case):
    pred, ref = _offset_pngs(tmp_path, n=1)
    other = tmp_path / "other"
    if case == "empty":
        other.mkdir()
    with pytest.raises(BenchError, match="does not exist" if case == "missing" else "no PNG or NIfTI"):
        score(ImageFolders(pred, other), ["psnr"], registry)


def test_shape_mismatch_names_the_file(tmp_path, registry):
    _png(tmp_path / "pred" / "bad.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "ref" / "bad.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(BenchError, match="bad"):
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["psnr"], registry)


def test_unknown_metric_lists_installed(tmp_path, registry):
    pred, ref = _offset_pngs(tmp_path, n=1)
    with pytest.raises(PluginError, match="psnr"):
        score(ImageFolders(pred, ref), ["nosuchmetric"], registry)


def test_nifti_requires_data_range(tmp_path, registry):
    vol = np.zeros((8, 8, 8))
    _nii(tmp_path / "pred" / "v.nii.gz", vol)
    _nii(tmp_path / "ref" / "v.nii.gz", vol)
    with pytest.raises(BenchError) as info:
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["psnr"], registry)
    assert NIFTI_RANGE_MESSAGE in str(info.value)


def test_nifti_3d_with_data_range(tmp_path, registry):
    rng = np.random.default_rng(2)
    for i in range(3):
        ref = rng.uniform(0, 900, size=(12, 14, 16))
        _nii(tmp_path / "ref" / f"vol{i}.nii.gz", ref)
        _nii(tmp_path / "pred" / f"vol{i}.nii.gz", ref + 50.0 if i else ref)
    _nii(tmp_path / "ref" / "flat.nii", np.full((12, 14, 16), 500.0))  # uncompressed works too
    _nii(tmp_path / "pred" / "flat.nii", np.full((12, 14, 16), 500.0))
    result = score(ImageFolders(tmp_path / "pred", tmp_path / "ref", 1000.0), ["psnr", "ssim"], registry, batch_size=2)
    assert result.dims == 3
    psnr = result.metrics["psnr"]
    assert psnr.per_file["vol1"] == pytest.approx(20 * math.log10(1000 / 50), abs=1e-3)
    assert psnr.per_file["vol0"] == pytest.approx(100.0)
    ssim = result.metrics["ssim"]
    assert ssim.settings["dims"] == 3
    assert ssim.per_file["vol0"] == pytest.approx(1.0, abs=1e-6)
    assert ssim.per_file["flat"] == pytest.approx(1.0, abs=1e-6)
    assert ssim.per_file["vol1"] < 1.0
    assert result.provenance["data_range"] == 1000.0
    assert result.provenance["mapping"] == ["NIfTI: value / 1000"]


def test_nifti_out_of_range_and_nan_are_errors(tmp_path, registry):
    vol = np.full((6, 6, 6), 10.0)
    _nii(tmp_path / "ref" / "v.nii.gz", vol)
    high = vol.copy()
    high[0, 0, 0] = 1500.0
    _nii(tmp_path / "pred" / "v.nii.gz", high)
    with pytest.raises(BenchError, match=r"v\.nii\.gz.*\[10, 1500\]"):
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref", 1000.0), ["psnr"], registry)
    bad = vol.copy()
    bad[1, 1, 1] = np.nan
    _nii(tmp_path / "pred" / "v.nii.gz", bad)
    with pytest.raises(BenchError, match=r"v\.nii\.gz.*NaN"):
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref", 1000.0), ["psnr"], registry)


def test_mixed_dims_error(tmp_path, registry):
    _nii(tmp_path / "pred" / "a.nii", np.zeros((6, 6)))
    _nii(tmp_path / "ref" / "a.nii", np.zeros((6, 6)))
    _nii(tmp_path / "pred" / "b.nii", np.zeros((6, 6, 6)))
    _nii(tmp_path / "ref" / "b.nii", np.zeros((6, 6, 6)))
    with pytest.raises(BenchError, match="mixed dims"):
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref", 1.0), ["psnr"], registry)


def test_json_output_is_serialisable(tmp_path, registry):
    pred, ref = _offset_pngs(tmp_path, n=3)
    out = score(ImageFolders(pred, ref), ["psnr", "ssim"], registry).to_json()
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert set(back["metrics"]) == {"psnr", "ssim"}
    assert set(back["metrics"]["psnr"]["per_file"]) == {"img0", "img1", "img2"}
    assert back["metrics"]["psnr"]["settings"]["data_range"] == 1.0
    assert back["provenance"]["data_range"] == "dtype maximum (PNG)"
    assert back["n_files"] == 3


def test_metric_without_direction_is_shown_as_not_ranked(tmp_path, registry):
    """data-copying has no ranking direction (C_T near 0 is ideal): neither "higher" nor "lower" is true of it."""
    pred, ref = _offset_pngs(tmp_path, n=3)
    result = score(ImageFolders(pred, ref), ["psnr", "ssim", "data-copying"], registry)
    assert result.metrics["data-copying"].higher_is_better is None
    table = result.table().split("\n\n")[0].splitlines()[2:]  # the rows, before the notes
    rows = {line.split()[0]: line for line in table}
    assert rows["data-copying"].endswith("not ranked")
    assert rows["psnr"].endswith("higher") and rows["ssim"].endswith("higher")
    back = result.to_json()["metrics"]
    assert back["data-copying"]["higher_is_better"] is None and back["psnr"]["higher_is_better"] is True


def test_a_16_bit_colour_png_is_refused_not_read_as_8_bit(tmp_path, registry, rgb16_png):
    """Pillow reads 16-bit RGB with the low byte dropped; score must not turn that into a number."""
    ref = np.full((6, 5, 3), 40000, np.uint16)
    bad = rgb16_png(tmp_path / "pred" / "a.png", ref)
    rgb16_png(tmp_path / "ref" / "a.png", ref)
    with pytest.raises(BenchError) as info:
        score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["psnr"], registry)
    assert str(info.value).startswith(f"{bad}: 16-bit colour PNG;")


def test_palette_and_grey_alpha_pngs_are_read_as_their_colours(tmp_path, registry):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(16, 12), dtype=np.uint8)
    _png(tmp_path / "ref" / "g.png", grey)
    (tmp_path / "pred").mkdir()
    Image.fromarray(grey).convert("LA").save(tmp_path / "pred" / "g.png")  # the same grey, with alpha
    rgb = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    _png(tmp_path / "ref2" / "p.png", rgb)
    palette = Image.fromarray(rgb).quantize(colors=16)  # lossy: the colours differ from the RGB
    (tmp_path / "pred2").mkdir()
    palette.save(tmp_path / "pred2" / "p.png")
    # The alpha channel dropped (else the shapes would differ), the grey read as it is: identical images.
    same = score(ImageFolders(tmp_path / "pred", tmp_path / "ref"), ["psnr"], registry).metrics["psnr"]
    identical = score(ImageFolders(tmp_path / "ref", tmp_path / "ref"), ["psnr"], registry).metrics["psnr"]
    assert same.value == identical.value
    colours = np.asarray(palette.convert("RGB"), dtype=np.float64)
    expected = 10 * math.log10(1 / np.mean((colours / 255 - rgb / 255) ** 2))
    result = score(ImageFolders(tmp_path / "pred2", tmp_path / "ref2"), ["psnr"], registry)
    assert result.metrics["psnr"].value == pytest.approx(expected, abs=1e-6)
