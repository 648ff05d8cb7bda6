"""``benchmarks/copies.py`` (issue 19): its smoke run, and the copies and scores it makes.

The smoke run needs Debian's ``lxde-icon-theme`` (``apt-get download``, once per machine, into
``~/.cache/patchhash-bench/copies``); without network or apt-get it is skipped.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smoke_runs import smoke_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import copies  # noqa: E402 - after the path above


@smoke_run("copies.py")
def test_copies_smoke(smoke):
    figures, stdout = smoke
    if "skipped" in figures:
        pytest.skip(f"the icon theme cannot be fetched here: {figures['skipped']}")
    assert figures["indexed"] == {"icons": 40, "wallpapers": 0, "pictures": 40}
    ours = figures["patchhash"]["query"]["recall"]
    assert set(ours) == {*copies.KINDS, "overall"} and figures["queries"] == ours["overall"]["queries"]
    assert ours["flattened on black"]["recall_at_1"] == 1.0  # exactly what the index holds
    assert ours["flattened on white"]["recall_at_1"] == 1.0  # the background rule of the default model for files
    assert ours["mirror"]["recall_at_1"] == 1.0  # the mirror rule of the default model for files: no --flip needed
    assert figures["patchhash"]["query_flip"]["recall"]["mirror"]["recall_at_1"] == 1.0
    assert figures["imagehash"]["dhash"]["cpu_s"] > 0 and figures["patchhash"]["cpu_s"] > 0
    assert "| overall |" in stdout


def icon_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for theme, sizes in (("A", (48, 32, 128)), ("B", (48,))):
        for name in ("one", "two", "same"):
            pixels = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8) if name != "same" else np.full((4, 4, 4), 9, np.uint8)
            for size in sizes:
                folder = root / "usr/share/icons" / theme / f"{size}x{size}" / "apps"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, "RGBA").resize((size, size)).save(folder / f"{name}.png")
    (root / "usr/share/icons/A/48x48/apps/alias.png").symlink_to("one.png")


def test_icons_with_their_other_sizes_each_distinct_image_once(tmp_path):
    icon_tree(tmp_path)
    found = copies.icon_files(tmp_path)
    names = [(p.parents[2].name, p.name) for p, _ in found]
    assert names == [("A", "one.png"), ("A", "same.png"), ("A", "two.png"), ("B", "one.png"), ("B", "same.png"), ("B", "two.png")]
    assert [size for size, _ in found[0][1]] == [128, 32]  # the other sizes, not 48, not the alias
    assert found[3][1] == []
    kept = copies.distinct(found)
    assert [(p.parents[2].name, p.name) for p, _ in kept] == names[:4] + names[5:]  # B's "same" equals A's


@pytest.mark.parametrize("kind", copies.KINDS[1:])
def test_each_kind_of_copy(kind):
    rng = random.Random(0)
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 4), dtype=np.uint8), "RGBA")
    copy, fmt, _ = copies.make_copy(kind, rgba, rng)
    expected_size = {"half size": (40, 30), "5% crop": (76, 57)}.get(kind, (80, 60))
    assert copy.size == expected_size
    expected_mode = {"jpeg q30": "RGB", "grey": "LA", "flattened on white": "RGB", "flattened on black": "RGB"}.get(kind, "RGBA")
    assert copy.mode == expected_mode and fmt == ("jpeg" if kind == "jpeg q30" else "png")
    if kind == "mirror":
        assert np.array_equal(np.asarray(copy), np.asarray(rgba)[:, ::-1])
    if kind == "jpeg q30":  # an icon saved as JPEG is flattened onto white first
        assert np.array_equal(np.asarray(copy), np.asarray(copies._flatten(rgba, (255, 255, 255))))


def test_recall_per_kind_and_overall():
    queries = [{"file": "a", "kind": "mirror", "original": 3}, {"file": "b", "kind": "mirror", "original": 4},
               {"file": "c", "kind": "grey", "original": 5}]
    ranked = {"a": [3, 1], "b": [1, 2, 4], "c": []}
    got = copies.recall(ranked, queries)
    assert got["mirror"] == {"queries": 2, "recall_at_1": 0.5, "recall_at_10": 1.0}
    assert got["grey"] == {"queries": 1, "recall_at_1": 0.0, "recall_at_10": 0.0}
    assert got["overall"] == {"queries": 3, "recall_at_1": 1 / 3, "recall_at_10": 2 / 3}


def test_a_wallpaper_shipped_as_several_files_is_one_picture():
    files = [Path("/i/usr/share/icons/A/48x48/apps/x_16x16.png"), Path("/i/usr/share/backgrounds/sway/Blue_1920x1080.png"),
             Path("/i/usr/share/backgrounds/sway/Blue_768x1024_Portrait.png"), Path("/i/usr/share/backgrounds/mate/Blue.jpg"),
             Path("/i/usr/share/backgrounds/mate/Blue_3840x2160.jpg"), Path("/i/usr/share/backgrounds/mate/Waves.png")]
    picture = copies.same_picture(files)
    assert picture == [0, 1, 1, 3, 3, 5]  # an icon is its own picture; folders keep pictures apart
    queries = [{"file": "a", "kind": "grey", "original": 2}, {"file": "b", "kind": "grey", "original": 4}]
    ranked = {"a": [1, 0], "b": [5, 0]}
    assert copies.recall(ranked, queries)["overall"]["recall_at_1"] == 0.0
    got = copies.recall(ranked, queries, picture)["overall"]
    assert got["recall_at_1"] == 0.5 and got["recall_at_10"] == 0.5  # 1 is 2's picture; 5 is not 4's
