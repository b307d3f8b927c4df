"""The comparison strip: which items every cell keeps, and the page that lines them up."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench_core.images import STRIP_INDEX, STRIP_ITEMS, StripKeeper
from bench_core.report.html import build_report
from bench_core.results import load_results

TEST_IDS = [f"item_{i:03d}" for i in range(12)]  # the fake toy dataset's test split


def _lowest(ids: list[str], n: int) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.blake2b(i.encode(), digest_size=8).digest())[:n]


def _tiles(built: list[str], item_id: str) -> dict[str, torch.Tensor]:
    built.append(item_id)
    return {"output": torch.full((1, 4, 4), len(built) / 100)}


def test_keeper_keeps_the_lowest_hashes_whatever_the_order_and_builds_only_kept_tiles(tmp_path: Path) -> None:
    ids = [f"case{i}" for i in range(40)]
    expected = _lowest(ids, STRIP_ITEMS)
    for seed in range(3):
        order = ids[:]
        random.Random(seed).shuffle(order)
        keeper, built = StripKeeper(), []
        for item_id in order:
            keeper.offer(item_id, functools.partial(_tiles, built, item_id))
        assert [item_id for _, item_id, _ in keeper.kept] == expected
        # Tiles are made only for items that were among the lowest when they arrived.
        assert set(built) <= {i for n, i in enumerate(order) if i in _lowest(order[: n + 1], STRIP_ITEMS)}
    keeper.save(tmp_path / "recon")
    assert json.loads((tmp_path / "recon" / STRIP_INDEX).read_text()) == expected
    assert sorted(p.stem for p in (tmp_path / "recon" / "output").glob("*.png")) == sorted(expected)


def test_keeper_of_a_split_smaller_than_the_strip_keeps_all(tmp_path: Path) -> None:
    keeper = StripKeeper()
    for item_id in ("b", "a"):
        keeper.offer(item_id, lambda: {"target": torch.zeros(1, 2, 2), "output": torch.ones(1, 2, 2)})
    keeper.save(tmp_path)
    assert sorted(json.loads((tmp_path / STRIP_INDEX).read_text())) == ["a", "b"]
    assert np.asarray(Image.open(tmp_path / "output" / "a.png")).tolist() == [[255, 255], [255, 255]]


def test_every_cell_of_a_dataset_keeps_the_same_items(cli_run: Path) -> None:
    data = load_results(cli_run)
    done = [c for c in data.cells if c["status"] == "done" and c["dataset"] == "toy"]
    assert {c["model"] for c in done} >= {"baseline:mean-image", "<script>alert(1)</script>"}
    expected = _lowest(TEST_IDS, STRIP_ITEMS)
    for cell in done:
        folder = cli_run / cell["details"]["cell_dir"] / "strip" / "recon"
        assert json.loads((folder / STRIP_INDEX).read_text()) == expected, cell["model"]
        assert sorted(p.name for p in folder.iterdir()) == [STRIP_INDEX, "output", "target"]  # no input on recon
        # The kept output is the image the metrics saw: the same pixels as the per-item PNG.
        name = f"{expected[0]}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "output" / name)),
                                      np.asarray(Image.open(folder.parent.parent / "recon" / name)))  # fmt: skip


def test_strip_page_lines_up_models_baselines_and_the_best_models_worst_and_median(cli_run, tmp_path) -> None:
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)
    index = build_report(out).read_text()
    (href,) = re.findall(r'<a class="strip-link" href="([^"]+)"', index)
    page = out / href
    html = page.read_text()
    section = html[html.index('id="task-recon"') : html.index("</section>", html.index('id="task-recon"'))]
    rows = [unescape(r) for r in re.findall(r'<th scope="row" class="text">([^<]*)<', section)]
    models = sorted(label for label in rows if label not in ("ground truth",))
    assert rows[0] == "ground truth" and models[0].startswith("<script>") and "baseline:mean-image" in rows
    heads = [unescape(h) for h in re.findall(r'<th class="text item-head" title="([^"]*)"', section)]
    # The leaderboard's best on toy-mae (lower is better) decides the last two columns.
    board = next(t for t in json.loads((out / "leaderboard.json").read_text()) if t["task"] == "recon")
    best = next(m for m, cells in board["rows"].items() if cells["toy-mae"]["best"])
    best_cell = next(c for c in load_results(out).cells
                     if c["model"] == best and c["dataset"] == "toy" and c["seed"] == 0)  # fmt: skip
    per_file = json.loads((out / best_cell["details"]["cell_dir"] / "eval.json").read_text())["recon"]["toy-mae"]
    ranked = sorted(per_file["per_file"].items(), key=lambda kv: (-kv[1], kv[0]))
    assert heads == [*_lowest(TEST_IDS, STRIP_ITEMS), ranked[0][0], ranked[(len(ranked) - 1) // 2][0]]
    assert f"worst of {best} by toy-mae" in unescape(section) and f"median of {best} by toy-mae" in unescape(section)
    srcs = re.findall(r'<img src="([^"]+)"', section)
    assert len(srcs) == len(rows) * len(heads)  # every row has every item: cells save per-item images here
    assert all((page.parent / src).resolve().is_file() for src in srcs)
    assert not any(src.startswith("data:") for src in srcs)
    # Under each model's output its per-item value, the one in its eval.json.
    assert f'<span class="sub">{ranked[0][1]:.4g}</span>' in section


def test_no_strip_without_kept_items(tmp_path, make_store) -> None:
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, {"ssim": {"value": 0.8}}, {"ssim": [0.7, 0.9]})])
    assert "strip-link" not in build_report(out).read_text() and not (out / "strips").exists()


@pytest.mark.parametrize("damaged", ["not json", '{"a": 1}'])
def test_a_damaged_strip_index_shows_no_fixed_items(cli_run, tmp_path, damaged: str) -> None:
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)
    for index in out.glob(f"cells/*/strip/recon/{STRIP_INDEX}"):
        index.write_text(damaged)
    build_report(out)
    html = next((out / "strips").glob("*.html")).read_text()
    heads = re.findall(r'<th class="text item-head" title="([^"]*)"', html[: html.index("</section>")])
    assert len(heads) == 2  # only the best model's worst and median, from the per-item images


def test_without_per_item_images_only_the_kept_items_are_shown(cli_run, tmp_path) -> None:
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)
    for folder in out.glob("cells/*/recon"):  # as if save_images had been off
        shutil.rmtree(folder)
    build_report(out)
    html = next((out / "strips").glob("*.html")).read_text()
    section = html[html.index('id="task-recon"') : html.index("</section>", html.index('id="task-recon"'))]
    heads = re.findall(r'<th class="text item-head" title="([^"]*)"', section)
    assert heads == _lowest(TEST_IDS, STRIP_ITEMS) and "not kept" not in section


class _Volumes(torch.utils.data.Dataset):
    """Five random 1x4x6x8 volumes in [0, 1], ids v0..v4."""

    def __init__(self) -> None:
        self.x = torch.from_numpy(np.random.default_rng(0).random((5, 1, 4, 6, 8)).astype(np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "id": f"v{i}"}


class _Identity(torch.nn.Module):
    def reconstruct(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return x


def test_volumes_keep_their_three_centre_planes_even_without_saving_images(tmp_path: Path) -> None:
    from bench_core.api import RECONSTRUCT, DataSpec
    from bench_core.evaluator import EvalJob, EvalSettings, Task, evaluate

    data = _Volumes()
    spec = DataSpec(("image",), (1,), 3, (4, 6, 8), (0.0, 1.0), {"test": 5})
    job = EvalJob(_Identity(), spec, [Task("recon", RECONSTRUCT, "image", "image")], {}, data)
    evaluate(job, EvalSettings(device=torch.device("cpu"), batch_size=2, save_images=False), tmp_path)
    assert not (tmp_path / "recon").exists() and not (tmp_path / "gt").exists()  # no per-item images asked for
    kept = json.loads((tmp_path / "strip" / "recon" / STRIP_INDEX).read_text())
    assert kept == _lowest([f"v{i}" for i in range(5)], STRIP_ITEMS)  # five items: all of them, in hash order
    x = data.x[int(kept[0][1:]), 0].numpy()
    planes = [x[2], x[:, 3], x[:, :, 4]]  # (6, 8), (4, 8), (4, 6): each padded to 8x8, side by side
    expected = np.concatenate([np.pad(p, ((0, 8 - p.shape[0]), (0, 8 - p.shape[1]))) for p in planes], axis=1)
    shown = np.asarray(Image.open(tmp_path / "strip" / "recon" / "output" / f"{kept[0]}.png"))
    np.testing.assert_array_equal(shown, np.floor(expected * 255 + 0.5).astype(np.uint8))
    assert shown.shape == (8, 24)
