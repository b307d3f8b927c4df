"""The ``folder`` dataset: the user's own PNG / NIfTI folders, values checked against PIL and nibabel reads."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from bench_core.api import DataError
from bench_core.datacheck import check_dataset
from bench_core.evaluator import unit_of
from bench_core.testing import check_dataset_plugin
from bench_plugins.datasets import folder
from bench_plugins.datasets.folder import LAYOUT, Folder

README = Path(__file__).parents[2] / "README.md"
CT_MR = {"ct": {"range": [-1000, 2000]}, "mr": {"range": [0, 4095]}}


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _nii(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _raises_exactly(message: str) -> pytest.RaisesContext:
    return pytest.raises(DataError, match="^" + re.escape(message) + "$")


def _grey_folder(root: Path, counts: dict[str, int], shape: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for i in range(n):
            _png(root / split / f"{split}_{i:02d}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def _pil(path: Path) -> np.ndarray:
    """The reference read: PIL's array, channels first, float64."""
    array = np.asarray(Image.open(path)).astype(np.float64)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _mapped(array: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.asarray(array, np.float64) - low) / (high - low) * 2.0 - 1.0


def test_grey_png_values_and_the_seeded_val_split(tmp_path: Path) -> None:
    root = _grey_folder(tmp_path / "data", {"train": 10, "test": 3})
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: no modality subfolder
    data = Folder(root, val_fraction=0.3, seed=5)
    spec = data.spec()
    assert spec.modalities == ("image",) and spec.channels == (1,) and spec.dims == 2 and spec.shape == (16, 12)
    assert spec.value_range == (-1.0, 1.0) and dict(spec.split_sizes) == {"train": 7, "val": 3, "test": 3}
    # The val split is the first round(0.3 * 10) = 3 of a permutation seeded with 5 over the sorted names.
    names = [f"train_{i:02d}" for i in range(10)]
    chosen = {names[i] for i in np.random.default_rng(5).permutation(10)[:3]}
    val, train = data.split("val"), data.split("train")
    assert [val[i]["id"] for i in range(3)] == sorted(chosen)
    assert [train[i]["id"] for i in range(7)] == sorted(set(names) - chosen)
    for split in (train, val, data.split("test")):
        for i in range(len(split)):
            item = split[i]
            reference = _mapped(_pil(split.files[i]), 0, 255)
            assert item["image"].dtype == torch.float32 and item["id"] == _stem(split.files[i])
            np.testing.assert_allclose(item["image"].numpy(), reference, atol=1e-6)
    assert Folder(root).spec().split_sizes["val"] == 1  # default 0.1 of 10
    other = Folder(root, val_fraction=0.3, seed=6).split("val")
    assert [other[i]["id"] for i in range(3)] != sorted(chosen)


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".png")


def test_16_bit_grey_with_default_and_declared_range_and_rgb(tmp_path: Path) -> None:
    values = (np.arange(8 * 6, dtype=np.uint16) * 85).reshape(8, 6)  # 0 .. 3995
    for split in ("train", "val", "test"):
        _png(tmp_path / "grey16" / split / "a.png", values)
        _png(tmp_path / "grey16" / split / "b.png", values[::-1].copy())
    data = Folder(tmp_path / "grey16")
    assert Image.open(data.split("train").files[0]).mode == "I;16"
    np.testing.assert_allclose(data.split("test")[0]["image"].numpy(), _mapped(values[None], 0, 65535), atol=1e-6)
    declared = Folder(tmp_path / "grey16", modalities={"image": {"range": [0, 4095]}})
    np.testing.assert_allclose(
        declared.split("test")[1]["image"].numpy(), _mapped(values[::-1][None], 0, 4095), atol=1e-6
    )
    assert "16-bit grayscale PNG [0, 4095] -> [-1, 1]" in declared.spec().description

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for i in range(3):
            _png(tmp_path / "rgb" / split / f"{i}.png", rng.integers(0, 256, (8, 6, 3), dtype=np.uint8))
    rgb = Folder(tmp_path / "rgb", modalities=["photo"])
    assert rgb.spec().modalities == ("photo",) and rgb.spec().channels == (3,)
    split = rgb.split("test")
    np.testing.assert_allclose(split[2]["photo"].numpy(), _mapped(_pil(split.files[2]), 0, 255), atol=1e-6)


def _ct_mr(root: Path, counts: dict[str, int], shape: tuple[int, ...] = (8, 8)) -> Path:
    """Paired folders: CT as float32 NIfTI in HU, MR as 16-bit PNG (2D) or int16 NIfTI (3D)."""
    rng = np.random.default_rng(2)
    for split, n in counts.items():
        for i in range(n):
            _nii(root / split / "ct" / f"{i:03d}.nii.gz", rng.uniform(-1000, 2000, shape).astype(np.float32))
            mr = rng.integers(0, 4096, shape)
            if len(shape) == 2:
                _png(root / split / "mr" / f"{i:03d}.png", mr.astype(np.uint16))
            else:
                _nii(root / split / "mr" / f"{i:03d}.nii", mr.astype(np.int16))
    return root


def test_paired_nifti_and_png_with_their_own_ranges(tmp_path: Path) -> None:
    root = _ct_mr(tmp_path / "pelvis", {"train": 6, "val": 2, "test": 2})
    data = Folder(root, modalities=CT_MR)
    spec = data.spec()
    assert spec.modalities == ("ct", "mr") and spec.channels == (1, 1) and spec.shape == (8, 8)
    assert dict(spec.split_sizes) == {"train": 6, "val": 2, "test": 2}
    item = data.split("val")[1]
    assert item["id"] == "001"
    ct = nib.load(root / "val" / "ct" / "001.nii.gz").get_fdata()
    np.testing.assert_allclose(item["ct"][0].numpy(), _mapped(ct, -1000, 2000), atol=1e-6)
    np.testing.assert_allclose(item["mr"].numpy(), _mapped(_pil(root / "val" / "mr" / "001.png"), 0, 4095), atol=1e-6)
    # The option's order decides which modality is A.
    assert Folder(root, modalities={"mr": CT_MR["mr"], "ct": CT_MR["ct"]}).spec().modalities == ("mr", "ct")
    check_dataset_plugin(Folder, root, make=False, modalities=CT_MR)


def test_kept_ranges_yield_the_files_values_and_score_as_the_mapped_ones(tmp_path: Path) -> None:
    root = _ct_mr(tmp_path / "pelvis", {"train": 6, "val": 2, "test": 2})
    kept, mapped = Folder(root, modalities=CT_MR, keep_ranges=True), Folder(root, modalities=CT_MR)
    spec = kept.spec()
    assert spec.ranges == ((-1000.0, 2000.0), (0.0, 4095.0)) and spec.value_range is None
    assert mapped.spec().value_range == (-1.0, 1.0)
    item, item01 = kept.split("test")[0], mapped.split("test")[0]
    ct = nib.load(root / "test" / "ct" / "000.nii.gz").get_fdata()
    np.testing.assert_allclose(item["ct"][0].numpy(), ct, rtol=1e-7)  # Hounsfield units as stored
    np.testing.assert_array_equal(item["mr"].numpy(), _pil(root / "test" / "mr" / "000.png"))
    # The engine maps each modality's own range onto [0, 1]: the same numbers either way.
    for m in ("ct", "mr"):
        ours = unit_of(spec, m)(item[m])
        np.testing.assert_allclose(ours.numpy(), unit_of(mapped.spec(), m)(item01[m]).numpy(), atol=1e-6)
    check_dataset_plugin(Folder, root, make=False, modalities=CT_MR, keep_ranges=True)
    with _raises_exactly("folder: option keep_ranges must be true or false, got 'yes'"):
        Folder(root, modalities=CT_MR, keep_ranges="yes")


def test_3d_volumes_resized_and_cropped(tmp_path: Path) -> None:
    root = _ct_mr(tmp_path / "volumes", {"train": 3, "test": 1}, shape=(6, 8, 10))
    ct = nib.load(root / "test" / "ct" / "000.nii.gz").get_fdata()
    cropped = Folder(root, modalities=CT_MR, size=[4, 4, 6], fit="crop")
    assert cropped.spec().shape == (4, 4, 6) and cropped.spec().dims == 3
    item = cropped.split("test")[0]
    np.testing.assert_allclose(item["ct"][0].numpy(), _mapped(ct[1:5, 2:6, 2:8], -1000, 2000), atol=1e-6)
    # Growing every axis: the antialiasing filter is the plain one, so this is torch's trilinear resize.
    grown = Folder(root, modalities=CT_MR, size=[9, 12, 15]).split("test")[0]["ct"]
    reference = F.interpolate(
        torch.from_numpy(_mapped(ct, -1000, 2000))[None, None], size=(9, 12, 15), mode="trilinear"
    )
    np.testing.assert_allclose(grown.numpy(), reference[0].numpy(), atol=1e-5)
    shrunk = Folder(root, modalities=CT_MR, size=[3, 4, 5]).split("test")[0]
    assert shrunk["mr"].shape == (1, 3, 4, 5) and float(shrunk["ct"].abs().max()) <= 1.0
    check_dataset_plugin(Folder, root, make=False, modalities=CT_MR, size=[4, 4, 4])


def test_clip_and_trailing_singleton_slices(tmp_path: Path) -> None:
    hu = np.linspace(-1024, 3071, 48, dtype=np.float32).reshape(8, 6, 1)  # a 2D slice stored as 8x6x1
    for split in ("train", "val", "test"):
        _nii(tmp_path / "ct" / split / "s.nii.gz", hu)
    path = tmp_path / "ct" / "test" / "s.nii.gz"
    with _raises_exactly(
        f"{path}: values span [-1024, 3071], outside the declared range [-1000, 2000] of image; widen "
        "modalities.image.range, or set modalities.image.clip: true to clip to it"
    ):
        Folder(tmp_path / "ct", modalities={"image": {"range": [-1000, 2000]}}).split("test")[0]
    clipped = Folder(tmp_path / "ct", modalities={"image": {"range": [-1000, 2000], "clip": True}})
    assert clipped.spec().shape == (8, 6)
    expected = _mapped(np.clip(hu[..., 0], -1000, 2000), -1000, 2000)
    np.testing.assert_allclose(clipped.split("test")[0]["image"][0].numpy(), expected, atol=1e-6)


def test_embedded_example_is_gold_split_into_modality_folders(tmp_path: Path) -> None:
    from bench_plugins.datasets.gold import Gold

    check_dataset_plugin(Folder, tmp_path / "folder")  # writes the example (n=12) first
    Gold.make_embedded(tmp_path / "gold", n=12, seed=0)
    data, gold = Folder(tmp_path / "folder"), Gold(tmp_path / "gold")
    assert data.spec().modalities == ("ct", "mr")
    assert dict(data.spec().split_sizes) == {"train": 10, "val": 1, "test": 1}
    item, pair = data.split("test")[0], gold.split("test")[0]
    assert item["id"] == pair["id"]
    assert torch.equal(item["ct"], pair["A"]) and torch.equal(item["mr"], pair["B"])


def test_fingerprint_follows_the_content_not_the_location(tmp_path: Path) -> None:
    a = _grey_folder(tmp_path / "a", {"train": 4, "test": 2})
    b = _grey_folder(tmp_path / "b", {"train": 4, "test": 2})
    assert Folder(a).fingerprint() == Folder(b).fingerprint()
    _png(b / "test" / "test_01.png", np.zeros((16, 12), np.uint8))
    assert Folder(a).fingerprint() != Folder(b).fingerprint()


# -- bad inputs: the exact message, naming the file ------------------------------------------------


def test_unpaired_names_are_named_in_both_folders(tmp_path: Path) -> None:
    root = _ct_mr(tmp_path / "pairs", {"train": 3, "test": 1})
    (root / "train" / "mr" / "001.png").rename(root / "train" / "mr" / "011.png")
    train = root / "train"
    with _raises_exactly(
        "unpaired files (items are matched by file name without extension): "
        f"1 in {train / 'ct'} without a file of the same name in {train / 'mr'}: 001.nii.gz; "
        f"1 in {train / 'mr'} without a file of the same name in {train / 'ct'}: 011.png"
    ):
        Folder(root, modalities=CT_MR)


def test_png_kinds_that_are_refused(tmp_path: Path, rgb16_png) -> None:
    cases = {
        "rgba.png": (
            np.zeros((4, 4, 4), np.uint8),
            "RGBA PNG (alpha channel); save it as RGB or grayscale without alpha",
        ),
        "la.png": (None, "grayscale PNG with an alpha channel; save it without alpha (8- or 16-bit grayscale)"),
        "bw.png": (None, "1-bit black-and-white PNG; save it as 8-bit grayscale"),
        "palette.png": (
            None,
            "palette (indexed-colour) PNG; save it as grayscale or RGB so its values are intensities",
        ),
    }
    grey = Image.fromarray(np.zeros((4, 4), np.uint8))
    for name, (array, reason) in cases.items():
        path = tmp_path / name
        if array is not None:
            _png(path, array)
        else:
            grey.convert({"la.png": "LA", "bw.png": "1", "palette.png": "P"}[name]).save(path)
        with _raises_exactly(f"{path}: {reason}; expected 8- or 16-bit grayscale or 8-bit RGB PNGs"):
            folder.read_image(path)
    path = rgb16_png(tmp_path / "rgb16.png", np.full((3, 4, 3), 1000, np.uint16))
    with _raises_exactly(
        f"{path}: 16-bit colour PNG; Pillow reads colour PNGs with 8 bits per channel only, so it is refused "
        "rather than read with the low byte dropped; save it as 8-bit RGB, or as 16-bit grayscale per channel"
    ):
        folder.read_image(path)
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path, format="JPEG")
    with _raises_exactly(f"{path}: not a PNG file (its content is JPEG); expected PNG or NIfTI files"):
        folder.read_image(path)


def test_a_file_of_another_bit_depth_or_shape_is_named_by_data_check(tmp_path: Path) -> None:
    root = _grey_folder(tmp_path / "data", {"train": 4, "val": 1, "test": 3})
    deep = _png(root / "test" / "test_01.png", np.zeros((16, 12), np.uint16))
    wide = _png(root / "test" / "test_02.png", np.zeros((16, 13), np.uint8))
    first = root / "train" / "train_00.png"
    report = check_dataset(Folder, root, {})
    assert not report.ok
    assert [(b.split, b.index, b.item, b.reason) for b in report.bad_items] == [
        ("test", 1, str(deep), f"{deep}: 16-bit grayscale PNG, but the image files are 8-bit grayscale PNG (like "
         f"{first}); every file of a modality must be of one kind"),
        ("test", 2, str(wide), f"{wide}: shape 16x13, but the dataset's items are 16x12 (like {first}); set the "
         "option size to resize (or, with fit: crop, centre-crop) every item to one shape"),
    ]  # fmt: skip
    assert check_dataset(Folder, root, {"size": [16, 12]}).bad_items[0].index == 1  # the bit depth still differs


def test_nifti_without_a_range_and_nan_values(tmp_path: Path) -> None:
    volume = np.zeros((4, 4, 4), np.float32)
    for split in ("train", "test"):
        for i in range(2):
            _nii(tmp_path / "t1" / split / f"{i}.nii", volume)
    with _raises_exactly(
        f"folder: the image files are NIfTI (like {tmp_path / 't1' / 'train' / '0.nii'}), which declare no value "
        "range; give it as options: {modalities: {image: {range: [LOW, HIGH]}}} (LOW maps to -1, HIGH to 1)"
    ):
        Folder(tmp_path / "t1")
    volume[1, 2, 3] = np.nan
    path = _nii(tmp_path / "t1" / "test" / "1.nii", volume)
    with _raises_exactly(f"{path}: contains NaN or Inf values"):
        Folder(tmp_path / "t1", modalities={"image": {"range": [0, 1]}}).split("test")[1]


def test_paired_shapes_that_differ(tmp_path: Path) -> None:
    root = _ct_mr(tmp_path / "pairs", {"train": 2, "test": 1})
    ct = root / "train" / "ct" / "000.nii.gz"
    mr = _png(root / "train" / "mr" / "000.png", np.zeros((8, 10), np.uint16))
    with _raises_exactly(
        f"folder: the modalities of an item differ in shape ({ct} is 8x8, {mr} is 8x10); set the option size to "
        "resize or crop them to one shape (2D and 3D modalities cannot be paired)"
    ):
        Folder(root, modalities=CT_MR)
    assert Folder(root, modalities=CT_MR, size=[8, 8]).split("train")[0]["mr"].shape == (1, 8, 8)
    small = root / "test" / "ct" / "000.nii.gz"
    with _raises_exactly(f"{small}: shape 8x8 is smaller than the crop size 8x9; use fit: resize, or a smaller size"):
        Folder(root, modalities=CT_MR, size=[8, 9], fit="crop").split("test")[0]


def test_empty_and_missing_split_folders(tmp_path: Path) -> None:
    root = _grey_folder(tmp_path / "data", {"train": 3})
    with _raises_exactly(f"split folder {root / 'test'} does not exist; expected layout: {LAYOUT}"):
        Folder(root)
    (root / "test").mkdir()
    with _raises_exactly(
        f"split folder {root / 'test'} holds no *.png or *.nii or *.nii.gz files; expected layout: {LAYOUT}"
    ):
        Folder(root)
    paired = _ct_mr(tmp_path / "pairs", {"train": 2, "test": 1})
    (paired / "val" / "ct").mkdir(parents=True)
    empty = paired / "val" / "ct"
    with _raises_exactly(f"split folder {empty} holds no *.png or *.nii or *.nii.gz files; expected layout: {LAYOUT}"):
        Folder(paired, modalities=CT_MR)
    _nii(paired / "val" / "ct" / "000.nii.gz", np.zeros((8, 8), np.float32))
    with _raises_exactly(f"split folder {paired / 'val' / 'mr'} does not exist; expected layout: {LAYOUT}"):
        Folder(paired, modalities=CT_MR)


def test_layout_and_option_mistakes(tmp_path: Path) -> None:
    root = _grey_folder(tmp_path / "data", {"train": 3, "val": 1, "test": 1})
    with _raises_exactly(
        f"folder: {root / 'val'} exists and val_fraction=0.2 is given; remove the option to use the folder, "
        "or the folder to split val from train"
    ):
        Folder(root, val_fraction=0.2)
    with _raises_exactly("folder: unknown key modalities.image.rnage (did you mean 'range'?); valid keys: range, clip"):
        Folder(root, modalities={"image": {"rnage": [0, 1]}})
    with _raises_exactly(
        "folder: option modalities.image.range must be [LOW, HIGH], finite numbers with LOW < HIGH, got [1, 0]"
    ):
        Folder(root, modalities={"image": {"range": [1, 0]}})
    valid = "fit, keep_ranges, modalities, seed, size, val_fraction"
    with _raises_exactly(f"folder: unknown option 'sise'; valid options: {valid}"):
        Folder(root, sise=[8, 8])
    with _raises_exactly("folder: option size must be 2 positive integers [H, W] for 2D data, got [8, 8, 8]"):
        Folder(root, size=[8, 8, 8])
    _nii(root / "train" / "train_00.nii.gz", np.zeros((2, 2), np.float32))
    with _raises_exactly(
        f"{root / 'train'}: train_00.nii.gz and train_00.png are one item twice; rename or remove one"
    ):
        Folder(root)
    lonely = _grey_folder(tmp_path / "lonely", {"train": 1, "test": 1})
    with _raises_exactly(
        f"folder: {lonely / 'train'} holds 1 item(s), too few to take a val split from; add items, or a val/ folder"
    ):
        Folder(lonely)
    three = _ct_mr(tmp_path / "three", {"train": 2, "test": 1})
    (three / "train" / "seg").mkdir()
    with _raises_exactly(
        f"folder: {three / 'train'} holds 3 subfolders (ct, mr, seg); a dataset has one or two modalities: "
        "name them with the option modalities"
    ):
        Folder(three)
    assert Folder(three, modalities=CT_MR).spec().modalities == ("ct", "mr")  # seg/ is left alone
    _png(three / "test" / "stray.png", np.zeros((8, 8), np.uint8))
    with _raises_exactly(
        f"{three / 'test'} holds image files (stray.png) beside the modality subfolders ct, mr; put each file in "
        "its modality's subfolder"
    ):
        Folder(three, modalities=CT_MR)


def test_truncated_nifti_reads_as_the_other_loaders_say(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).uniform(0, 1000, (64, 64)).astype(np.float32)
    for split in ("train", "test"):
        for i in range(2):
            _nii(tmp_path / "d" / split / f"{i}.nii.gz", noisy)
    path = tmp_path / "d" / "test" / "1.nii.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with _raises_exactly(
        f"{path}: truncated NIfTI file: the header declares a 64x64 float32 array (16384 bytes) but the data ends "
        "early; copy or export the file again"
    ):
        Folder(tmp_path / "d", modalities={"image": {"range": [0, 1000]}}).split("test")[1]


# -- the README's worked example ---------------------------------------------------------------------


def _readme_blocks() -> list[object]:
    """The YAML blocks of the README's "Your own data" section."""
    text = README.read_text()
    section = text.split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_readme_paired_example_builds_a_spec_phvae_serves(tmp_path: Path) -> None:
    from bench_plugins.models.phvae import PHVAE

    entry = _readme_blocks()[1][0]
    assert entry["plugin"] == "folder"
    root = _ct_mr(tmp_path / "pelvis", {"train": 3, "test": 1})
    spec = Folder(root, **entry["options"]).spec()
    assert spec.modalities == ("ct", "mr") and spec.shape == (128, 128)
    assert PHVAE.incompatibility(spec) is None


@pytest.mark.slow
def test_readme_suite_runs_on_a_png_folder(tmp_path: Path) -> None:
    """The README's suite, budgets cut to 3 steps, on 12 PNGs of our own, through `python -m bench_core run`."""
    suite = _readme_blocks()[0]
    data = _grey_folder(tmp_path / suite["datasets"][0]["root"], {"train": 8, "test": 4}, shape=(40, 48))
    check = subprocess.run(
        [sys.executable, "-m", "bench_core", "data", "check", "folder", "--root", str(data), "-o", "size=[64,64]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0 and check.stdout.rstrip().endswith("OK"), check.stdout + check.stderr
    suite["models"] = [{**model, "budget": {"steps": 3}} for model in suite["models"]]
    suite["evaluation"] = {"n_samples": 4, "max_items": 4}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench_core", "run", "suite.yaml", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    con = sqlite3.connect(tmp_path / "reports" / suite["name"] / "results.sqlite")
    cells = con.execute("SELECT model, dataset, status FROM cells WHERE kind = 'model'").fetchall()
    assert sorted(cells) == [("vqvae-tiny", "my-slices", "done"), ("vqvae2-tiny", "my-slices", "done")]
    metrics = {m for (m,) in con.execute("SELECT DISTINCT metric FROM results WHERE task = 'recon'")}
    assert {"psnr", "ssim"} <= metrics
